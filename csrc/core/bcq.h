// Bit-level helpers of the binary-coded (BCQ) layout, shared by the CPU and CUDA kernels.
//
// A BCQ weight is W[n, k] = sum_i alpha[g, i, n] * s_i[k, n] + offset[g, n], s_i in {-1, +1}, g = k / group_size.
// qplanes int32 [planes, K/32, N] holds the signs: bit j of qplanes[i, w, n] is s_i[32w + j, n], 1 meaning +1.
// So one word is 32 consecutive inputs of one output, and any run of bits in it, read as a number, is the
// index of a lookup table over those inputs' activations:
//
//   word:   bit 31 ............................................ bit 0
//           [ nibble 7 ][ nibble 6 ] ... [ nibble 1 ][ nibble 0 ]     nibble q = inputs 4q .. 4q+3
//   table of nibble q, entry e: sum_{t<4} (bit t of e ? +x[4q+t] : -x[4q+t])
//
// so sum_k s_i[k, n] x[k] over those 4 inputs is table[e] with e = nibble q of the word: one lookup instead of
// 4 sign multiplications, and the table is shared by every output n and every plane (LUT-GEMM, T-MAC).
#pragma once
#include <cstdint>

#include "core/bitpack.h"  // GPTQ_HD, num_groups

namespace gptq_kernels {
namespace core {

constexpr int kBcqMaxPlanes = 8;  // the layout allows 1..8 sign planes

// Plane counts the fused (lookup-table) kernels are built for; other counts dequantize and multiply.
GPTQ_HD constexpr bool bcq_fused_planes(int64_t planes) { return planes == 2 || planes == 3; }

// The fused kernels apply alpha and offset once per 32-input block, so every group boundary must fall on a
// multiple of 32 (true for group_size -1, multiples of 32, and any group_size >= K: one group).
GPTQ_HD constexpr bool bcq_groups_align_to_blocks(int64_t k, int64_t group_size) {
  return group_size == -1 || group_size % kBlockValues == 0 || group_size >= k;
}

// Group of 32-input block b when groups align to blocks.
GPTQ_HD constexpr int64_t bcq_block_group(int64_t block, int64_t group_size) {
  return group_size == -1 ? 0 : block * kBlockValues / group_size;
}

// `width` sign bits of a plane word starting at bit `shift`: a table index. (The CPU kernels skip the mask
// where their permute instruction reads only the low index bits anyway.)
GPTQ_HD constexpr uint32_t plane_bits(uint32_t word, int shift, int width) {
  return (word >> shift) & ((1u << width) - 1u);
}
GPTQ_HD constexpr uint32_t plane_nibble(uint32_t word, int q) { return plane_bits(word, 4 * q, 4); }
GPTQ_HD constexpr uint32_t plane_byte(uint32_t word, int b) { return plane_bits(word, 8 * b, 8); }

// Sign expansion: the sign s = +1 or -1 stored as bit j of a word.
GPTQ_HD constexpr float plane_sign(uint32_t word, int j) { return ((word >> j) & 1u) ? 1.0f : -1.0f; }
// The same as a float sign-bit mask: XOR it into a float to multiply the float by s (0 for +1, 0x80000000 for -1).
GPTQ_HD constexpr uint32_t plane_sign_mask(uint32_t word, int j) { return (~(word >> j) & 1u) << 31; }

// Entry e of the table over the `width` activations x[0..width): sum_t (bit t of e ? x[t] : -x[t]).
GPTQ_HD float bcq_table_entry(const float* x, int width, uint32_t e) {
  float sum = 0.0f;
  for (int t = 0; t < width; ++t) sum += plane_sign(e, t) * x[t];
  return sum;
}

}  // namespace core
}  // namespace gptq_kernels
