// The small-batch CUDA kernel: y = x @ W^T (+ bias) for a few rows of x (up to 8 per CTA; plan_gemm sends it up
// to 8 rows, or up to 32 in row tiles of 8 when the tensor-core kernel is off), read straight from the
// packed weights. At these batch sizes the product is bound by the bytes of qweight, so everything serves
// one goal: stream qweight once, in wide coalesced loads, with many loads in flight.
//
// Work split (grid = [row tiles, column tiles, K splits], kGemvThreads threads per CTA):
//   * a CTA owns kGemvColumns = 128 consecutive columns and ROWS rows of x; each thread owns 4 consecutive
//     columns, so one 16-byte load brings one packed word of each of its 4 columns and a warp reads 512
//     contiguous bytes of a qweight row;
//   * its K range (blocks_per_cta 32-row blocks) is walked in stages of kStageBlocks blocks; in a stage warp w
//     takes blocks w, w+4, w+8, w+12, so the four warps split K and meet only once, in shared memory, at the end;
//   * K splits beyond one CTA (split-K, when N alone cannot fill the GPU) write fp32 partial sums to a
//     workspace [splits, M, N] that a second, small kernel adds up in a fixed order (deterministic, no atomics,
//     and the workspace stays in L2).
//
// Per 32-row block a warp checks, with one vote, whether all 32 rows share a group (always true for sorted
// g_idx and group sizes that are multiples of 32). Then it accumulates sum_k x[k] q[k] in fp32, three
// instructions per value and row (inplace_value in common.cuh: a LOP3 and an FADD give q 2^p exactly, and x is
// staged times 2^-p), and when the group changes adds scale * (that sum - zero * sum_k x[k]), the sums of x
// coming per block from the staging. A block that mixes groups (unsorted act-order g_idx, odd group sizes) takes
// a slower path that looks the group up per row: correct for any g_idx.
#pragma once
#include <cuda_runtime.h>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

constexpr int kGemvThreads = 128;                    // 4 warps: enough CTAs per SM to keep loads in flight
constexpr int kGemvWarps = kGemvThreads / 32;
constexpr int kColumnsPerThread = 4;                 // one 16-byte load = 4 columns x one word
constexpr int kGemvColumns = 32 * kColumnsPerThread;  // 128 columns per CTA, shared by all its warps
constexpr int kBlocksPerWarpStage = 4;               // blocks each warp handles between two x stagings
constexpr int kStageBlocks = kGemvWarps * kBlocksPerWarpStage;  // 16 blocks = 512 rows of K per stage
constexpr int kStageValues = kStageBlocks * core::kBlockValues;
constexpr int kGemvMaxRowsPerCta = 8;                // rows sharing one decode; 8 keeps 64 fp32 sums in registers

// Blocks whose words one thread loads before decoding any of them: about 128 bytes in flight per thread
// (4 x 32 B for 2-bit, 2 x 48 B for 3-bit, 2 x 64 B for 4-bit, 1 x 128 B for 8-bit).
template <int BITS>
constexpr int blocks_in_flight() {
  return BITS == 2 ? 4 : (BITS == 8 ? 1 : 2);
}

// Launches gemv_kernel<T, BITS, rows_per_cta> (csrc/cuda/gemv_kernel.cuh) on `grid` x kGemvThreads threads.
// rows_per_cta is 1, 2, 4 or 8. Instantiated in gemv_<bits>bit.cu, one file per bit width so the 8 kernels of
// each compile in parallel with the others. The caller checks the launch (C10_CUDA_KERNEL_LAUNCH_CHECK).
template <int BITS>
void launch_gemv(const FusedGemmParams& p, ActType type, int rows_per_cta, dim3 grid, cudaStream_t stream);

}  // namespace cuda
}  // namespace gptq_kernels
