// Fragment order: the layout of 2- and 4-bit weights that the CUDA kernels read fastest. QuantLinear converts a
// layer's qweight to it once, on a CUDA device (ops to_fragment_order / from_fragment_order); checkpoints and
// state_dict() keep the GPTQ order of bitpack.h.
//
// It permutes the 32 values of every block of every column and nothing else: shapes, word addresses, qzeros,
// scales and g_idx stay as they are. Position pos of a block's bit stream (bitpack.h) holds row
//
//   row = 8p + 2t + h    for pos = 8t + 4h + p    (t = 0..3, h = 0..1, p = 0..3)
//
// of the block. Why: lane t (= lane % 4) of an mma.m16n8k16 B fragment holds, for each of its four registers
// p (16-row step p / 2, register p % 2), the two rows 8p + 2t and 8p + 2t + 1 of a 32-row block, as the low and
// high half of the register. In fragment order lane t's eight values are consecutive in the stream (one word
// at 4 bits, one half word at 2 bits), the low values of its four pairs first and the high values after:
//
//   4-bit word t:        bits 31..16: high values of pairs 3 2 1 0     bits 15..0: low values of pairs 3 2 1 0
//   2-bit word t/2, half t%2:  bits 15..8: high values of pairs 3 2 1 0   bits 7..0: low values of pairs 3 2 1 0
//
// so one masked OR places a pair in the two halves of a register (gemm_mma_kernel.cuh). 3- and 8-bit weights
// have no fragment order (their values straddle or fill words differently); they keep the GPTQ order.
#pragma once
#include <cstdint>

#include "core/bitpack.h"

namespace gptq_kernels {
namespace core {

GPTQ_HD constexpr bool has_fragment_order(int64_t bits) { return bits == 2 || bits == 4; }

// Row of the block stored at stream position pos, and its inverse (both are bit permutations of 0..31).
GPTQ_HD constexpr int fragment_row(int pos) { return (pos & 3) << 3 | (pos >> 3) << 1 | (pos >> 2 & 1); }
GPTQ_HD constexpr int fragment_position(int row) { return (row >> 1 & 3) << 3 | (row & 1) << 2 | row >> 3; }

// The row permutation of a whole K (a multiple of 32) that permute_rows applies to reach fragment order
// (out row r = row perm[r]), or, with inverse set, to return from it.
inline void fragment_order_permutation(int64_t k, bool inverse, int64_t* perm) {
  for (int64_t r = 0; r < k; ++r) {
    const int j = static_cast<int>(r % kBlockValues);
    perm[r] = r - j + (inverse ? fragment_position(j) : fragment_row(j));
  }
}

}  // namespace core
}  // namespace gptq_kernels
