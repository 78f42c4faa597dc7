// The tensor-core GEMV: y = x @ W^T (+ bias) for 1 to 16 rows of x, 2- and 4-bit weights in fragment order
// (core/fragment_order.h) or 3-bit weights in the checkpoint order, no g_idx, and groups of 32 or 64 rows, a
// multiple of 128 rows, or one group (what QuantLinear runs on CUDA, sorted act-order included). Other small-batch
// calls take the GEMV kernel of gemv.cuh.
//
// Why: at batch 1 the GEMV kernel spends about three instructions per weight value (mask, subtract the magic
// number, FFMA), more than an H100/H200 can issue while its memory delivers 2- or 3-bit weights. Here the
// products run on the tensor cores and the decode handles two values per instruction pair: one LOP3 (mask into
// the mantissas of two magic numbers) and one HFMA2 (q - zero, exactly), about 1.6-1.8 instructions per value with
// the loads and mma, about 2.2 at 3 bits (benchmarks/NOTES_cuda.md has the counts, benchmarks/sass_counts.py
// makes them).
//
// The product is computed transposed, y^T = W x^T, so that no mma row is wasted on a small batch: the weights are
// the A operand (16 output columns x 16 rows of K) and x^T the B operand (16 rows of K x 8 batch rows); 9 to 16
// rows take a second B tile, which reuses every decoded A fragment. With g = lane / 4 and t = lane % 4:
//   * each warp owns 32 consecutive columns; lane (g, t) owns columns 4g..4g+3 of them and, per 32-row block,
//     reads the fragment-order word of its t (4-bit: word t; 2-bit: word t / 2, of which it decodes half t % 2)
//     for those 4 columns with one 16-byte load straight from global memory into registers (3-bit: the two words
//     that hold rows 8t..8t+7, ThreeBitDecode in gemv_tc_kernel.cuh);
//   * its columns 4g + 2j and 4g + 2j + 1 are rows g and g + 8 of A tile j (j = 0, 1), so a block takes 2 tiles x
//     2 steps of 16 rows = 4 mma per row tile, and the fp32 accumulators of lane (g, t) hold its own 4 columns for
//     batch rows 8r + 2t and 8r + 2t + 1 of row tile r: scales and zero points are those of its own columns;
//   * x goes through shared memory: 512 rows of K of all (up to 16) batch rows per stage, copied with cp.async one
//     stage ahead into a second buffer, and read with one ldmatrix.x4 per block and row tile (the B fragments of
//     both steps; 3-bit: one 16-byte load of the lane's 8 consecutive values);
//   * the weight loads run one batch of blocks ahead of the decode (gemv_tc_batch_blocks), across stage
//     boundaries too; a group changes only between blocks at positions of a batch known at compile time (the
//     kernel is instantiated per gemv_tc_group_class), and its scales and zeros were loaded a group ahead.
// Grid, split-K and epilogue follow the GEMV kernel: [1, column tiles of 128, K splits], fp32 partial sums in the
// workspace when K is split. Assumes (plan_gemm checks): sm_80+, x rows 16-byte aligned with a row stride of whole
// 16-byte pieces, qweight and scales 16-byte aligned, N a multiple of 32, K a multiple of 32, K splits of a multiple
// of 4 blocks.
#pragma once
#include <cuda_runtime.h>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

constexpr int kGemvTcThreads = 128;
constexpr int kGemvTcWarps = kGemvTcThreads / 32;
constexpr int kGemvTcWarpColumns = 32;                              // 8 lanes (g) x 4 columns
constexpr int kGemvTcColumns = kGemvTcWarps * kGemvTcWarpColumns;  // 128 columns per CTA
constexpr int kGemvTcTileRows = 8;                                  // the n8 of the transposed mma
constexpr int kGemvTcMaxTiles = 2;                                  // row tiles of x per CTA: up to 16 rows
constexpr int kGemvTcMaxRows = kGemvTcMaxTiles * kGemvTcTileRows;
// CTAs per SM the kernel is built for (__launch_bounds__: at most 128 registers per thread with one row tile,
// 168 with two) and split-K aims at.
__host__ __device__ constexpr int gemv_tc_ctas_per_sm(int row_tiles) { return row_tiles == 1 ? 4 : 3; }
constexpr int kGemvTcStageBlocks = 16;                              // 512 rows of K of x per stage
// Elements per shared-memory row of x. Fragment order: 16 bytes of padding shift each row by 4 banks, so the 8 row
// addresses of an ldmatrix tile hit 32 different banks. 3-bit: 64 bytes shift each row by 16 banks, so the 8
// lanes of a quarter warp (2 rows x 4 consecutive 16-byte loads) do.
__host__ __device__ constexpr int gemv_tc_row_stride(int bits) {
  return kGemvTcStageBlocks * core::kBlockValues + (bits == 3 ? 32 : 8);
}

// Blocks per batch of weight loads: a lane issues the 16-byte loads of a whole batch a batch ahead of decoding
// it, into one of two register sets: 4 blocks x 16 bytes at 2 and 4 bits (at 2 bits lanes t and t ^ 1 load the
// same word, so half of it is new data), 2 blocks x 32 bytes at 3 bits (two words per block; 4 would not fit in
// the registers). Batches start at multiples of their size (plan_gemm splits K in multiples of 4 blocks), which
// is what lets a group change only at fixed positions of a batch.
__host__ __device__ constexpr int gemv_tc_batch_blocks(int bits) { return bits == 3 ? 2 : 4; }
constexpr int kGemvTcSplitBlocks = 4;  // K splits are a multiple of every batch size

// How the groups fall on 32-row blocks, as the kernel is instantiated for it: 1 or 2 (every group 32 or 64 rows),
// gemv_tc_batch_blocks(bits) (groups of a multiple of that many blocks, or a single group: no group starts inside
// a batch), or 0 when the tensor-core GEMV does not take the layer (other group sizes). group_size is -1 or at
// most k.
__host__ __device__ constexpr int gemv_tc_group_class(int64_t group_size, int64_t k, int bits) {
  const int batch = gemv_tc_batch_blocks(bits);
  if (group_size == -1 || group_size >= k) return batch;
  if (group_size % core::kBlockValues != 0) return 0;
  const int64_t blocks = group_size / core::kBlockValues;
  return blocks % batch == 0 ? batch : blocks <= 2 ? static_cast<int>(blocks) : 0;
}

// Launches gemv_tc_kernel (gemv_tc_kernel.cuh) for p.m <= kGemvTcMaxRows rows on `grid` x kGemvTcThreads
// threads; BITS is 2 or 4. Instantiated in gemv_tc_<bits>bit.cu. The caller checks the launch.
template <int BITS>
void launch_gemv_tc(const FusedGemmParams& p, ActType type, dim3 grid, cudaStream_t stream);

}  // namespace cuda
}  // namespace gptq_kernels
