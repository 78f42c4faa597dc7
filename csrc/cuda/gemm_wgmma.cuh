// The Hopper kernel: y = x @ W^T (+ bias) for large batches with wgmma (sm_90a: H100, H200), 2- and 4-bit weights
// in fragment order (core/fragment_order.h) or 3- and 8-bit weights in the checkpoint order, no g_idx, groups of a
// multiple of 32 rows or one group (what QuantLinear runs on CUDA). Off unless
// GPTQ_KERNELS_WGMMA=1 (read at every call, so a benchmark can compare it with the other paths in one process)
// until a GPU run has measured it against the tensor-core kernel and dequantize + cuBLAS; see
// benchmarks/NOTES_cuda.md.
//
// Why: mma.sync runs at about two thirds of an H100's tensor-core rate, so from a few hundred rows the
// tensor-core kernel (gemm_mma_kernel.cuh) and dequantize + cuBLAS (which writes and reads an fp16 copy of W)
// both fall behind cuBLAS on fp16 weights. wgmma multiplies a 64 x 16 A operand from registers by a 16 x N B
// operand from shared memory for a whole warpgroup, asynchronously, at the full rate.
//
// The product is computed transposed, y^T = W x^T, as in the tensor-core GEMV (gemv_tc.cuh), whose lanes and decode
// it shares (lane_decode.cuh): one warpgroup per CTA, 128 output columns (warp w: 32 of them, lane (g, t): 4),
// decoded into A fragments in registers (m64 = the 4 warps' 16 A rows each). B is the tile of x (N = 64 or 128
// batch rows) in the 128-byte swizzled K-major layout (wgmma_ops.cuh); for 3- and 8-bit weights, whose lanes decode
// rows 8t..8t+7 of a block (ThreeBitDecode, EightBitDecode), the pairs of x are permuted within each block on their
// way into the tile (4-byte copies) to match. Per 32-row block: the lane's words are decoded, times the group's scale, into two A
// tiles x two k16 steps (scales are folded into A, which rounds (q - zero) scale to the activation type once, as
// the dequantize + cuBLAS path does), then 4 wgmmas into two accumulator sets of N / 2 floats. Decoding block b + 1
// overlaps block b's wgmmas (two register sets of A, wgmma_wait<1> after each commit).
//
// Pipeline: stages of 64 rows of K (the x tile, and each thread's own words of weights per block) copied with
// cp.async into kWgmmaStages buffers, kWgmmaStages - 2 stages ahead of the math: a buffer is refilled only after
// the wgmmas of its last stage completed on every warp (the barrier at each stage's start follows each warp's
// wgmma_wait). Grid [row tiles, column tiles of 128, K splits]; split-K and epilogue as the other fused kernels.
// Assumes (plan_gemm checks): an sm_90a build on a compute capability 9.0 device, x rows 16-byte aligned with a
// row stride of whole 16-byte pieces, qweight and scales 16-byte aligned, N and K multiples of 32, K splits of
// whole stages.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

// Whether the extension holds the kernel's sm_90a code (setup.py builds compute capability 9.0 as the sm_90a target
// and defines GPTQ_KERNELS_SM90A). Built for other targets the kernel traps; plan_gemm never picks it there.
#if defined(GPTQ_KERNELS_SM90A) || defined(GPTQ_KERNELS_EMULATION)
constexpr bool kWgmmaBuilt = true;
#else
constexpr bool kWgmmaBuilt = false;
#endif

constexpr int kWgmmaThreads = 128;                  // one warpgroup
constexpr int kWgmmaColumns = 128;                  // 4 warps x 32 columns (lane_decode.cuh's lanes)
constexpr int kWgmmaStageBlocks = 2;                // 64 rows of K per stage: one 128-byte swizzled row of x
constexpr int kWgmmaStages = 4;                     // buffers; copies run kWgmmaStages - 2 stages ahead
constexpr int kWgmmaCtasPerSm = 2;                  // __launch_bounds__ (up to 255 registers) and split-K's aim
constexpr int kWgmmaMinBlocksPerCta = 16;
constexpr int64_t kWgmmaMinRows = 17;               // below, the small-batch kernels keep the call

// Batch rows per CTA (the wgmma's N): 128 (64 accumulators per thread per A tile, half the decode per product of
// 64) when there are more than 64 rows and those tiles alone give every SM kWgmmaCtasPerSm CTAs; else 64, so that
// a layer of a few hundred rows (e.g. 256 x 8192: 128 CTAs of 128 rows) still fills the GPU without split-K,
// whose workspace would exceed kMaxSplitkWorkspaceBytes there. 3- and 8-bit weights always take 64: with 128 rows
// their wider decode no longer fits the 255 registers (ptxas spills some 750 bytes per thread at 3 bits).
__host__ __device__ constexpr int wgmma_tile_rows(int64_t m, int64_t n, int64_t sms, int bits) {
  return bits != 3 && bits != 8 && m > 64 &&
                 ((m + 127) / 128) * ((n + kWgmmaColumns - 1) / kWgmmaColumns) >= sms * kWgmmaCtasPerSm
             ? 128
             : 64;
}
// Bytes of packed weights a thread copies per block: its word of 4 columns (2- and 4-bit), or the two words that
// hold its 24 bits of them (3-bit), or its two words of them (8-bit).
__host__ __device__ constexpr int wgmma_lane_block_bytes(int bits) { return bits == 3 || bits == 8 ? 32 : 16; }
// Shared memory of one stage: the x tile (tile rows x 128 bytes) and each thread's weights of its blocks.
__host__ __device__ constexpr int wgmma_stage_bytes(int tile_rows, int bits) {
  return tile_rows * 128 + kWgmmaStageBlocks * kWgmmaThreads * wgmma_lane_block_bytes(bits);
}
// Dynamic shared memory per CTA, with room to start the buffers on a 1024-byte boundary of the shared window.
__host__ __device__ constexpr size_t wgmma_shared_bytes(int tile_rows, int bits) {
  return static_cast<size_t>(kWgmmaStages) * wgmma_stage_bytes(tile_rows, bits) + 1024;
}
// Groups must start on 32-row blocks (kernel_group_size: -1 or at most K).
__host__ __device__ constexpr bool wgmma_takes_groups(int64_t group_size) {
  return group_size == -1 || (group_size > 0 && group_size % 32 == 0);
}

// Launches the kernel for BITS-bit weights (2 or 4 in fragment order, 3), tile_rows from wgmma_tile_rows. Returns the
// error of raising the kernel's shared-memory limit, if any (the launch itself is checked by the caller).
template <int BITS>
cudaError_t launch_gemm_wgmma(const FusedGemmParams& p, ActType type, int tile_rows, dim3 grid, cudaStream_t stream);

}  // namespace cuda
}  // namespace gptq_kernels
