// The fused CPU kernel for small batches: y = x @ W^T read straight from the packed weights.
//
// Work is split into 32-column tiles (N is a multiple of 32, so there is no remainder) and into
// *segments*: runs of 32-row blocks that share one group. Inside a segment the kernel accumulates
// sum_k x[k] * q[k, n] in registers and applies the group's scale and zero once at the end:
//     y[n] += scale[g, n] * (sum_k x[k] q[k, n]  -  zero[g, n] * sum_k x[k])
// so the hot loop is shift, mask, convert, fused multiply-add, and the dequantized weight never exists.
// Up to kMaxRows rows of x (a *row band*) share one decode of the weights. With a few rows the kernel is bound by
// memory and sweeps the weights a block at a time (few concurrent streams); with more it is bound by arithmetic
// and keeps a whole segment's sums in registers (gemv_tiles_block_major and gemv_tiles in cpu/gemv_tile.h).
//
// With bf16 activations on CPUs with AVX512_BF16, 2/3/4-bit weights take a variant that decodes two values of a
// column straight into a bf16 pair (128 + q, no conversion) and multiplies with vdpbf16ps, 32 multiply-adds per
// instruction; the +128 comes back out with the zero-point term (cpu/bf16_pairs.h). Other activations (fp16 ones
// converted to fp32) and 8-bit weights take the fp32 kernel (fp32 x times the integers, fused multiply-adds).
#pragma once
#include <cstdint>

#include "core/bitpack.h"

namespace gptq_kernels {
namespace cpu {

enum class ScaleType { kFloat, kHalf, kBFloat16 };

// Activations arrive in *row bands* of the kernel's band_rows rows (the last band may be shorter): the band of rows
// [m0, m0 + R) starts at element m0 * (values per row) and holds the value of row m0 + r at position i at index
// i * R + r, so the kernel reads the R rows' values of one position as constant offsets from one pointer.
struct GemvProblem {
  const float* x;           // fp32 kernels: x[r, k] * 2^x_scale_exponent(bits, k % 32), banded over k
  const uint32_t* x_pairs;  // bf16 kernel: lane p of block b is position b * 16 + p, banded (see cpu/bf16_pairs.h)
  int64_t m, k, n;
  int bits;
  const uint32_t* qweight;  // [k * bits / 32, n]
  const uint32_t* qzeros;   // [groups, n * bits / 32]
  const void* scales;       // [groups, n] of scale_type
  ScaleType scale_type;
  int64_t num_segments;
  const int64_t* segment_begin;  // [num_segments + 1], in 32-row blocks
  const int64_t* segment_group;  // [num_segments]
  const float* x_segment_sums;   // [m, num_segments]: sum of the unscaled x over each segment's rows
  const float* x_pair_bias;      // bf16 kernel, [m, num_segments]: 128 * sum of the paired (pre-scaled) x
  float* y;                      // [m, n] fp32: the first segment writes it, the others add to it
};

constexpr int64_t kTileColumns = 32;

// The kernel masks most values where they lie in their word (q * 2^shift) instead of shifting them down,
// so it expects x pre-scaled by 2^x_scale_exponent at each position j of a block.
constexpr int x_scale_exponent(int bits, int j) {
  return (!core::straddles(j, bits) && core::shift_of(j, bits) + bits < 32) ? -core::shift_of(j, bits) : 0;
}

// One instruction-set variant: tiles computes the 32-column tiles [tile_begin, tile_end) of y for all rows.
struct GemvKernel {
  void (*tiles)(const GemvProblem& p, int64_t tile_begin, int64_t tile_end);
  int band_rows;    // rows that share one decode of the weights, and the row band of the activations
  bool bf16_pairs;  // takes x_pairs (bf16 activations, 2/3/4 bits) instead of x
};

// Defined in gemv_generic.cpp, gemv_avx2.cpp, gemv_avx512.cpp and gemv_avx512bf16.cpp (the last two x86 only).
extern const GemvKernel kGemvGeneric;
extern const GemvKernel kGemvAvx2;
extern const GemvKernel kGemvAvx512;
extern const GemvKernel kGemvAvx512Bf16;

}  // namespace cpu
}  // namespace gptq_kernels
