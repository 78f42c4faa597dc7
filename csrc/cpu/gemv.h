// The fused CPU kernel for small batches: y = x @ W^T read straight from the packed weights.
//
// Work is split into 32-column tiles (N is a multiple of 32, so there is no remainder) and into
// *segments*: runs of 32-row blocks that share one group. Inside a segment the kernel accumulates
// sum_k x[k] * q[k, n] in registers and applies the group's scale and zero once at the end:
//     y[n] += scale[g, n] * (sum_k x[k] q[k, n]  -  zero[g, n] * sum_k x[k])
// so the hot loop is shift, mask, convert, fused multiply-add, and the dequantized weight never exists.
#pragma once
#include <cstdint>

#include "core/bitpack.h"

namespace gptq_kernels {
namespace cpu {

enum class ScaleType { kFloat, kHalf, kBFloat16 };

struct GemvProblem {
  const float* x;          // [m, k] fp32, contiguous, x[r, k] * 2^x_scale_exponent(bits, k % 32)
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
  float* y;                      // [m, n] fp32, zeroed by the caller; the kernel accumulates into it
};

constexpr int64_t kTileColumns = 32;

// The kernel masks most values where they lie in their word (q * 2^shift) instead of shifting them down,
// so it expects x pre-scaled by 2^x_scale_exponent at each position j of a block.
constexpr int x_scale_exponent(int bits, int j) {
  return (!core::straddles(j, bits) && core::shift_of(j, bits) + bits < 32) ? -core::shift_of(j, bits) : 0;
}

// Each computes the 32-column tiles [tile_begin, tile_end) of y for all rows; one per instruction set.
void gemv_tiles_generic(const GemvProblem& p, int64_t tile_begin, int64_t tile_end);
void gemv_tiles_avx2(const GemvProblem& p, int64_t tile_begin, int64_t tile_end);
void gemv_tiles_avx512(const GemvProblem& p, int64_t tile_begin, int64_t tile_end);

}  // namespace cpu
}  // namespace gptq_kernels
