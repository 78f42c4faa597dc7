// The tensor-core kernel for batches past the GEMV range: y = x @ W^T (+ bias) with mma.sync m16n8k16
// (fp16 or bf16 inputs, fp32 accumulators; sm_80 and later).
//
// CTA tile: BM = 16 * MT rows of x (MT = 1, 2 or 4) x BN = mma_columns(MT) columns (128; 64 at MT = 4), walking
// K in tiles of kMmaTileK = 64 rows (two 32-row packed blocks). Per K tile:
//   1. cp.async brings the x tile [BM, 64] and the packed weight tile [2 * bits words, BN] into shared memory,
//      kMmaStages tiles ahead (the loads of three tiles are in flight while one is computed); each thread's
//      chunks are fixed, so their addresses are computed once;
//   2. each of the 4 warps owns BN / 4 columns and decodes its B fragments straight from the packed words into
//      registers, q - zero exactly in fp16x2/bf16x2 (FragmentDecode: byte permute, mask, one fused multiply-add
//      per pair of values); no dequantized tile goes through shared memory, so there is one barrier per K tile.
//      2- and 4-bit weights in fragment order (core/fragment_order.h, FragmentOrderDecode) take one load per
//      block and column instead of `bits`, from a tile whose words are swizzled against bank conflicts;
//   3. ldmatrix loads the A fragments of x, and each warp runs MT x NT mma per 16 rows of K into fp32
//      accumulators of sum x (q - zero), which are scaled into the output sums when the group changes (as in
//      the GEMV kernel: exact products, scales of any dtype). A block whose rows mix groups (unsorted act-order,
//      group sizes not a multiple of 32) is dequantized value by value with its own scales instead.
// Split-K and the epilogue work as in the GEMV kernel (gemv.cuh): with one K split the CTA writes y (+ bias),
// otherwise fp32 partial sums into the workspace that splitk_reduce_kernel (split_k.cuh) adds up.
//
// Assumes: x rows 16-byte aligned (base and row stride), qweight 16-byte aligned, N a multiple of 32 (a column
// tile may reach past N: those columns load zeros and are not written), K a multiple of 32 (a K tile may hold
// one valid block: the other is zero-filled).
#pragma once
#include <cuda_runtime.h>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

constexpr int kMmaThreads = 128;                        // 4 warps, each owning a quarter of the tile's columns
constexpr int kMmaWarps = kMmaThreads / 32;
constexpr int kMmaTileBlocks = 2;                       // 32-row packed blocks per K tile
constexpr int kMmaTileK = kMmaTileBlocks * core::kBlockValues;  // 64 rows of K per tile
// CTAs per SM the kernel is built for (__launch_bounds__: at most 168 registers per thread) and split-K aims at.
constexpr int kMmaCtasPerSm = 3;
constexpr int kMmaStages = 4;                           // K tiles in shared memory: 3 loading while 1 computes
constexpr int kMmaPad = 8;                              // 16 bytes of padding per row: conflict-free fragment reads
constexpr int kMmaRowStride = kMmaTileK + kMmaPad;      // 72 elements = 144 bytes per smem row of x

// n8 tiles per warp and columns per CTA: 32 columns per warp while the accumulators allow (MT = 1, 2: 2 x
// 16 or 2 x 32 fp32 per thread, for the group's and the finished sums), 16 at MT = 4 (2 x 32).
__host__ __device__ constexpr int mma_n8_tiles(int mt) { return mt == 4 ? 2 : 4; }
__host__ __device__ constexpr int mma_columns(int mt) { return kMmaWarps * 8 * mma_n8_tiles(mt); }

// Dynamic shared memory of one CTA: kMmaStages x (x tile + packed tile).
constexpr size_t mma_smem_bytes(int bits, int mt) {
  return kMmaStages * (static_cast<size_t>(16 * mt) * kMmaRowStride * 2 +
                       static_cast<size_t>(kMmaTileBlocks * bits) * mma_columns(mt) * 4);
}

// Launches the kernel for 16 * mt rows per CTA (mt = 1, 2 or 4) on `grid` x kMmaThreads threads. Instantiated
// in gemm_mma_<bits>bit.cu. Returns the error of raising the kernel's shared-memory limit, if any; the caller
// checks the launch itself (C10_CUDA_KERNEL_LAUNCH_CHECK).
template <int BITS>
cudaError_t launch_mma(const FusedGemmParams& p, ActType type, int mt, dim3 grid, cudaStream_t stream);

}  // namespace cuda
}  // namespace gptq_kernels
