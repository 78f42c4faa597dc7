// The small-batch CPU kernel for binary-coded (BCQ) weights: y = x @ W^T by table lookups (LUT-GEMM, T-MAC),
// read straight from the checkpoint's qplanes and never forming the dequantized matrix.
//
// For one group and one output n,
//     y[n] += sum_i alpha[g, i, n] * (sum_k s_i[k, n] x[k])  +  offset[g, n] * (sum_k x[k]).
// The inner sum over C consecutive inputs is one entry of a table of the 2^C signed sums of those activations
// (core/bcq.h), indexed by C bits of the plane word. Tables depend only on x, so they are built once per call
// and shared by every output and every plane. With 2^C equal to the vector width, one table is one register
// and a single permute instruction looks up a whole vector of outputs at once:
//   AVX2     C = 3: 8-entry tables, vpermps (reads the low 3 bits of each index lane)
//   AVX-512  C = 4: 16-entry tables, vpermps zmm (low 4 bits)
//   generic  C = 3: the same tables, looked up lane by lane
// So each word costs one shift, one permute and one add per C inputs (and per row of x), where a uniform
// 2- or 3-bit kernel spends a mask, a conversion and a fused multiply-add per input.
#pragma once
#include <cstdint>

#include "cpu/gemv.h"  // ScaleType

namespace gptq_kernels {
namespace cpu {

struct BcqLutProblem {
  const float* tables;       // [m, k/32, table_floats_per_block], from build_tables
  int64_t m, k, n;
  int planes;                // 2 or 3
  const uint32_t* qplanes;   // [planes, k/32, n]
  const void* alpha;         // [groups, planes, n] of alpha_type
  ScaleType alpha_type;
  const void* offset;        // [groups, n] of offset_type
  ScaleType offset_type;
  // Segments: consecutive 32-input blocks of one group. Runs: consecutive segments of at most kBcqMaxRunBlocks
  // blocks in all, which the kernel sweeps over all its columns before it moves on (so small groups share one
  // sweep, and large ones are split).
  int64_t num_segments;
  const int64_t* segment_begin;  // [num_segments + 1], in blocks
  const int64_t* segment_group;  // [num_segments]
  const double* x_segment_sums;  // [m, num_segments]: sum of x over each segment's inputs
  int64_t num_runs;
  const int64_t* run_begin;      // [num_runs + 1], in segments
  float* y;                      // [m, n] fp32, zeroed by the caller; the kernel accumulates into it
};

constexpr int64_t kBcqTileColumns = 32;  // columns per work item (N is a multiple of 32)
// Blocks per run. Each (plane, block) row of a run is a separate memory stream and the run's tables must stay in
// L1: 4 blocks (12 streams with 3 planes) measured fastest on the build machine, 2 and 8 up to 1.5x slower.
constexpr int64_t kBcqMaxRunBlocks = 4;

// One instruction-set variant of the kernels.
struct BcqKernels {
  int chunk_bits;                  // C: inputs per lookup
  int64_t table_floats_per_block;  // ceil(32 / C) tables of 2^C floats per 32-input block and row
  // Tables of rows [0, m) for blocks [block_begin, block_end); x is [m, k] fp32 contiguous.
  void (*build_tables)(const float* x, int64_t m, int64_t k, int64_t block_begin, int64_t block_end,
                       float* tables);
  // The 32-column tiles [tile_begin, tile_end) of y, all rows.
  void (*tiles)(const BcqLutProblem& p, int64_t tile_begin, int64_t tile_end);
  // The large-batch path and bcq_dequantize: W^T[k, n] for all k and n in [n_begin, n_end) into
  // dst[k * ld + n - n_begin], from fp32 alpha [groups, planes, n] and offset [groups, n]. Any plane count and
  // group size (g = k / group_size). Plain loops that the compiler vectorises for the variant's instruction set.
  void (*dequantize_columns)(const uint32_t* qplanes, const float* alpha, const float* offset, int64_t planes,
                             int64_t k, int64_t n, int64_t group_size, int64_t n_begin, int64_t n_end, float* dst,
                             int64_t ld);
};

BcqKernels bcq_kernels_generic();
BcqKernels bcq_kernels_avx2();
BcqKernels bcq_kernels_avx512();

}  // namespace cpu
}  // namespace gptq_kernels
