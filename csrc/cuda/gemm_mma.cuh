// The tensor-core kernel for batches past the GEMV range: y = x @ W^T (+ bias) with mma.sync m16n8k16
// (fp16 or bf16 inputs, fp32 accumulators; sm_80 and later).
//
// CTA tile: BM = 16 * MT rows of x (MT = 1, 2 or 4) x kMmaColumns = 64 columns, walking K in tiles of
// kMmaTileK = 64 rows (two 32-row packed blocks). Per K tile:
//   1. cp.async brings the x tile [BM, 64] and the packed weight tile [2 * bits words, 64 columns] into shared
//      memory, kMmaStages tiles ahead (the loads of three tiles are in flight while one is computed);
//   2. every thread dequantizes one 32-row block of one column from the packed tile to fp16/bf16
//      (scale * (q - zero), rounded once, as the dequantize op does) into a [64 columns, 64 k] tile. With
//      scales in the activation dtype and 2/4-bit weights (8-bit too with fp16) two values are decoded per
//      instruction in fp16x2/bf16x2 registers (dequantize_block_pairs: about 2.5 instructions per value
//      against 4.5 in fp32, same results bit for bit); otherwise in fp32;
//   3. each of the 4 warps multiplies the x tile by its 16 columns: MT x 2 mma per 16 rows of K.
// Split-K and the epilogue work as in the GEMV kernel (gemv.cuh): with one K split the CTA writes y (+ bias),
// otherwise fp32 partial sums into the workspace that splitk_reduce_kernel (split_k.cuh) adds up.
//
// Assumes: x rows 16-byte aligned (base and row stride), qweight 16-byte aligned, N a multiple of 32 (a
// 64-column tile may be half outside N: those columns load zeros and are not written), K a multiple of 32 (a
// K tile may hold one valid block: the other is zero-filled).
#pragma once
#include <cuda_runtime.h>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

constexpr int kMmaThreads = 128;                        // 4 warps, each owning 16 of the tile's columns
constexpr int kMmaWarps = kMmaThreads / 32;
constexpr int kMmaColumns = 64;                         // columns per CTA tile
constexpr int kMmaTileBlocks = 2;                       // 32-row packed blocks per K tile
constexpr int kMmaTileK = kMmaTileBlocks * core::kBlockValues;  // 64 rows of K per tile
constexpr int kMmaStages = 4;                           // K tiles in shared memory: 3 loading while 1 computes
constexpr int kMmaPad = 8;                              // 16 bytes of padding per row: conflict-free fragment reads
constexpr int kMmaRowStride = kMmaTileK + kMmaPad;      // 72 elements = 144 bytes per smem row of x or W^T

// Dynamic shared memory of one CTA: kMmaStages x (x tile + packed tile) + the dequantized W^T tile.
constexpr size_t mma_smem_bytes(int bits, int mt) {
  return kMmaStages * (static_cast<size_t>(16 * mt) * kMmaRowStride * 2 +
                       static_cast<size_t>(kMmaTileBlocks * bits) * kMmaColumns * 4) +
         static_cast<size_t>(kMmaColumns) * kMmaRowStride * 2;
}

// Launches the kernel for 16 * mt rows per CTA (mt = 1, 2 or 4) on `grid` x kMmaThreads threads. Instantiated
// in gemm_mma_<bits>bit.cu. Returns the error of raising the kernel's shared-memory limit, if any; the caller
// checks the launch itself (C10_CUDA_KERNEL_LAUNCH_CHECK).
template <int BITS>
cudaError_t launch_mma(const FusedGemmParams& p, ActType type, int mt, dim3 grid, cudaStream_t stream);

}  // namespace cuda
}  // namespace gptq_kernels
