// CUDA kernels for binary-coded (BCQ) weights (layout: csrc/core/bcq.h). ATen-free, like common.cuh, so the
// instantiation files compile with nvcc alone.
//
// The small-batch kernel (bcq_gemv_kernel.cuh) is a lookup-table GEMV, y = x @ W^T for up to kBcqMaxRowsPerCta
// rows per CTA. At these batch sizes the product is bound by the bytes of qplanes, so, as in the uniform GEMV
// (gemv.cuh), everything serves one goal: stream each plane word once, in 16-byte coalesced loads.
//
// Work split (grid = [row tiles, column tiles, K splits], kBcqThreads threads per CTA):
//   * a CTA owns kBcqColumns = 128 consecutive outputs and ROWS rows of x; each thread owns 4 consecutive
//     outputs, so one 16-byte load brings one word of each of its 4 outputs (a warp reads 512 contiguous bytes
//     of a plane row);
//   * its K range is walked in stages of kBcqStageBlocks 32-input blocks. Per stage the CTA first builds, in
//     shared memory, the lookup tables of its rows: for every 4 consecutive inputs the 16 signed sums
//     sum_t (bit t of e ? x : -x) (8 tables per block), and each block's sum of x (for the offset). Then warp w
//     takes blocks w, w+4, w+8, w+12 of the stage; per plane word a thread does 8 lookups (one per nibble) per row,
//     and applies alpha once per word and the offset once per block, in fp32;
//   * all lanes of a warp look up the same 16-entry table at the same time (same block, same nibble, different
//     outputs): 16 consecutive floats sit in 16 different banks, so the lookups are free of bank conflicts;
//   * K splits beyond one CTA (when N alone cannot fill the GPU) write fp32 partial sums to a workspace
//     [splits, M, N] that a second kernel adds up in a fixed order (deterministic, no atomics).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/bcq.h"
#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

constexpr int kBcqThreads = 128;                      // 4 warps
constexpr int kBcqWarps = kBcqThreads / 32;
constexpr int kBcqColumnsPerThread = 4;               // one 16-byte load = 4 outputs x one word
constexpr int kBcqColumns = 32 * kBcqColumnsPerThread;  // 128 outputs per CTA
constexpr int kBcqBlocksPerWarpStage = 4;             // blocks each warp handles per stage
constexpr int kBcqStageBlocks = kBcqWarps * kBcqBlocksPerWarpStage;  // 16 blocks = 512 inputs per stage
constexpr int kBcqTablesPerBlock = 8;                 // one table per nibble of a plane word
constexpr int kBcqTableEntries = 16;
constexpr int kBcqStageFloats = kBcqStageBlocks * kBcqTablesPerBlock * kBcqTableEntries;  // 8 KB per row
constexpr int kBcqMaxRowsPerCta = 4;                  // rows sharing one load of the planes: 32 KB of tables

// Arguments of the lookup-table kernel, filled once per call in bcq_ops.cu.
struct BcqGemvParams {
  const void* x;             // [m, k] of the activation type, rows ldx apart, unit stride along k
  int64_t ldx;
  const uint32_t* qplanes;   // [planes, k / 32, n], 16-byte aligned
  const void* alpha;         // [groups, planes, n] of alpha_type
  FloatType alpha_type;
  const void* offset;        // [groups, n] of offset_type
  FloatType offset_type;
  int group_size;            // -1 or a multiple of 32 (any group_size >= k is passed as k)
  int groups;
  int m, k, n;
  int blocks_per_cta;        // 32-input blocks of K per CTA (grid.z = ceil(k / 32 / blocks_per_cta))
  void* y;                   // [m, n] of the activation type; written when gridDim.z == 1
  const void* bias;          // [n] of bias_type or nullptr; added when gridDim.z == 1
  FloatType bias_type;
  float* workspace;          // [gridDim.z, m, n] fp32 partial sums; written when gridDim.z > 1
};

// Launches bcq_gemv_kernel<x type, PLANES, rows_per_cta> on `grid` x kBcqThreads threads; x_type is the activation
// (and output) type, rows_per_cta 1, 2 or 4. Instantiated in bcq_gemv_<planes>planes.cu. The caller checks the
// launch.
template <int PLANES>
void launch_bcq_gemv(const BcqGemvParams& p, FloatType x_type, int rows_per_cta, dim3 grid, cudaStream_t stream);

// Rows the lookup-table kernel takes (two row tiles of 4 from 5 rows on; their CTAs re-read the same plane words
// at about the same time, mostly from L2). Above it the tables would be rebuilt for every 4 rows and every column
// tile, and dequantize + cuBLAS wins. To be tuned with benchmarks/bench_cuda.py on a GPU.
constexpr int64_t kBcqGemvMaxRows = 8;
// How bcq_gemm runs the lookup-table kernel for one call: rows per CTA, grid and K split, a pure function of the
// shapes and the GPU's SM count (never of tensor values), like the uniform gemm's plan (gemm_plan.cuh).
struct BcqGemvPlan {
  int rows_per_cta;        // 1, 2 or 4
  dim3 grid;               // [row tiles, column tiles, K splits]
  int64_t splits;          // grid.z; above 1 the kernel writes fp32 partial sums to a workspace
  int64_t blocks_per_cta;  // BcqGemvParams::blocks_per_cta
};
BcqGemvPlan plan_bcq_gemv(int64_t m, int64_t k, int64_t n, int64_t sms);  // bcq_fused.cu

// Launches the lookup-table kernel (2 or 3 planes) and, when K is split, the reduction of its partial sums into
// p.y; p.workspace must then hold plan.splits * m * n floats. Returns the first launch error.
cudaError_t launch_bcq_fused(const BcqGemvPlan& plan, int planes, const BcqGemvParams& p, FloatType x_type,
                             cudaStream_t stream);

struct BcqDequantParams {
  const uint32_t* qplanes;  // [planes, k / 32, n]
  const void* alpha;        // [groups, planes, n]
  FloatType alpha_type;
  const void* offset;       // [groups, n]
  FloatType offset_type;
  int planes;
  int group_size;           // -1: one group; any positive size (groups need not align to 32)
  int groups;
  int64_t k, n;
};

// out[k, n] (row-major [K, N] of out_type) = sum_i alpha * s_i + offset, summed in fp32, rounded once. Any plane
// count. The caller checks the launch.
void launch_bcq_dequantize(const BcqDequantParams& p, FloatType out_type, void* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace gptq_kernels
