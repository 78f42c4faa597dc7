// The body of the small-batch kernel (see gemv.cuh for the design) and its launcher. Include only from the
// gemv_<bits>bit.cu files that instantiate it.
#pragma once
#include "cuda/gemv.cuh"

namespace gptq_kernels {
namespace cuda {

template <typename T, int BITS, int ROWS>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(const FusedGemmParams p) {
  static_assert(ROWS >= 1 && ROWS <= kGemvMaxRowsPerCta, "ROWS out of range");
  constexpr int kInFlight = blocks_in_flight<BITS>();
  static_assert(kBlocksPerWarpStage % kInFlight == 0, "a stage must hold whole load batches");
  constexpr unsigned kFullMask = 0xffffffffu;

  // x of this CTA's rows for one stage, as fp32 times 2^-inplace_position (converted once, read as float4
  // broadcasts); reused at the end for the cross-warp reduction, which needs kGemvWarps * ROWS * kGemvColumns =
  // the same ROWS * 512 floats. x_sums: the sum of x over each 32-row block of the stage, per row.
  static_assert(kGemvWarps * kGemvColumns == kStageValues, "reduction buffer must alias the x stage");
  __shared__ __align__(16) float smem[ROWS * kStageValues];
  __shared__ float x_sums[ROWS * kStageBlocks];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = blockIdx.x * ROWS;
  const int n_tile = blockIdx.y * kGemvColumns;
  // Threads past N (N is a multiple of 32, not of 128) work on the last valid columns and discard the result,
  // so every thread reaches every barrier and no load needs a guard.
  const int n0 = min(n_tile + lane * kColumnsPerThread, p.n - kColumnsPerThread);
  const int kblocks = p.k / core::kBlockValues;
  const int kb_begin = blockIdx.z * p.blocks_per_cta;
  const int kb_end = min(kb_begin + p.blocks_per_cta, kblocks);
  const T* x = static_cast<const T*>(p.x);

  // Per group, sum x (q - zero) = sum x q - zero sum x: the FFMAs accumulate x q, x_sum the plain sum of x.
  float acc[ROWS][kColumnsPerThread];  // sum x q within the current group
  float out[ROWS][kColumnsPerThread];  // sum over finished groups of scale * (acc - zero * x_sum)
  float x_sum[ROWS];                   // sum x within the current group
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    x_sum[r] = 0.f;
#pragma unroll
    for (int c = 0; c < kColumnsPerThread; ++c) acc[r][c] = out[r][c] = 0.f;
  }
  int current_group = -1;
  // Without g_idx, the group of row `lane` of each block is counted forward: this warp's blocks come in order.
  GroupCursor cursor(static_cast<int64_t>(kb_begin) * core::kBlockValues + lane, p.group_size, p.groups);
  float scale[kColumnsPerThread] = {}, zero[kColumnsPerThread] = {};  // the current group's
  auto finish_group = [&]() {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
#pragma unroll
      for (int c = 0; c < kColumnsPerThread; ++c) {
        out[r][c] = fmaf(scale[c], fmaf(-zero[c], x_sum[r], acc[r][c]), out[r][c]);
        acc[r][c] = 0.f;
      }
      x_sum[r] = 0.f;
    }
  };

  for (int stage = kb_begin; stage < kb_end; stage += kStageBlocks) {
    __syncthreads();  // every warp is done with the previous stage's x
    // A warp stages 32 consecutive values, one block of one row, per iteration, and adds them up. Staged value
    // j of a block is the x of the row stored at position j: row j, or fragment_row(j) in fragment order.
    static_assert(kStageValues % kGemvThreads == 0 && kGemvThreads % core::kBlockValues == 0, "warp = block");
    for (int i = threadIdx.x; i < ROWS * kStageValues; i += kGemvThreads) {
      const int r = i / kStageValues, kk = i % kStageValues, j = kk % core::kBlockValues;
      const int64_t k = static_cast<int64_t>(stage) * core::kBlockValues + kk;
      float v = 0.f;
      if (row0 + r < p.m && k < static_cast<int64_t>(kb_end) * core::kBlockValues) {
        v = FloatConvert<T>::to_float(x[(row0 + r) * p.ldx + k - j + (p.fragment_order ? core::fragment_row(j) : j)]);
      }
      smem[i] = v * exp2_int(-inplace_position<BITS>(j));
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
      if (lane == 0) x_sums[r * kStageBlocks + kk / core::kBlockValues] = v;
    }
    __syncthreads();

#pragma unroll
    for (int u0 = 0; u0 < kBlocksPerWarpStage; u0 += kInFlight) {
      // Issue every load of the batch before decoding any of it.
      uint32_t w[kInFlight][kColumnsPerThread][BITS];
      int lane_group[kInFlight];
#pragma unroll
      for (int i = 0; i < kInFlight; ++i) {
        const int b = stage + (u0 + i) * kGemvWarps + warp;
        if (b < kb_end) {
#pragma unroll
          for (int word = 0; word < BITS; ++word) {
            const uint4 v = __ldg(reinterpret_cast<const uint4*>(
                p.qweight + (static_cast<int64_t>(b) * BITS + word) * p.n + n0));
            w[i][0][word] = v.x;
            w[i][1][word] = v.y;
            w[i][2][word] = v.z;
            w[i][3][word] = v.w;
          }
          const int64_t row = static_cast<int64_t>(b) * core::kBlockValues + lane;
          lane_group[i] = cursor.group_of(p.g_idx, row, p.group_size);
        }
      }
#pragma unroll
      for (int i = 0; i < kInFlight; ++i) {
        const int b = stage + (u0 + i) * kGemvWarps + warp;
        if (b >= kb_end) break;  // warp-uniform
        const float* xb = smem + (b - stage) * core::kBlockValues;
        const int g = __shfl_sync(kFullMask, lane_group[i], 0);
        if (__all_sync(kFullMask, lane_group[i] == g)) {
          // Fast path: one group for the whole block.
          if (g != current_group) {
            finish_group();
#pragma unroll
            for (int c = 0; c < kColumnsPerThread; ++c) {
              scale[c] = load_float(p.scales, static_cast<int64_t>(g) * p.n + n0 + c, p.scale_type);
              zero[c] = magic_zero<BITS>(p.qzeros, g, p.n, n0 + c) - kMagicFloat;
            }
            current_group = g;
          }
#pragma unroll
          for (int r = 0; r < ROWS; ++r) x_sum[r] += x_sums[r * kStageBlocks + b - stage];
#pragma unroll
          for (int jq = 0; jq < core::kBlockValues / 4; ++jq) {
            float4 xv[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) xv[r] = *reinterpret_cast<const float4*>(xb + r * kStageValues + jq * 4);
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) {
              float q[kColumnsPerThread];
#pragma unroll
              for (int c = 0; c < kColumnsPerThread; ++c) q[c] = inplace_value<BITS>(w[i][c], jq * 4 + jj);
#pragma unroll
              for (int r = 0; r < ROWS; ++r) {
                const float xr = jj == 0 ? xv[r].x : jj == 1 ? xv[r].y : jj == 2 ? xv[r].z : xv[r].w;
#pragma unroll
                for (int c = 0; c < kColumnsPerThread; ++c) acc[r][c] = fmaf(xr, q[c], acc[r][c]);
              }
            }
          }
        } else {
          // Slow path: rows of this block belong to different groups, so every value is dequantized with its
          // own group's scale and zero. It re-reads the block's words (now in L1) with run-time indices
          // instead of indexing the registers above, which would move them to local memory.
          const uint32_t* block = p.qweight + static_cast<int64_t>(b) * BITS * p.n + n0;
#pragma unroll 1
          for (int j = 0; j < core::kBlockValues; ++j) {
            const int gj = __shfl_sync(kFullMask, lane_group[i], p.fragment_order ? core::fragment_row(j) : j);
            const float unscale = exp2_int(inplace_position<BITS>(j));  // x was staged times 2^-p
#pragma unroll
            for (int c = 0; c < kColumnsPerThread; ++c) {
              const float s = load_float(p.scales, static_cast<int64_t>(gj) * p.n + n0 + c, p.scale_type);
              const float wv =
                  (magic_float(core::extract(block + c, p.n, j, BITS)) - magic_zero<BITS>(p.qzeros, gj, p.n, n0 + c)) * s;
#pragma unroll
              for (int r = 0; r < ROWS; ++r) out[r][c] = fmaf(xb[r * kStageValues + j] * unscale, wv, out[r][c]);
            }
          }
        }
      }
    }
  }
  finish_group();

  // Cross-warp reduction: red[warp][r][column in tile], then thread t sums column t over the warps.
  __syncthreads();  // every warp is done reading x from smem
  float* red = smem;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    *reinterpret_cast<float4*>(red + (warp * ROWS + r) * kGemvColumns + lane * kColumnsPerThread) =
        make_float4(out[r][0], out[r][1], out[r][2], out[r][3]);
  }
  __syncthreads();
  const int n = n_tile + threadIdx.x;
  if (n >= p.n) return;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int m = row0 + r;
    if (m >= p.m) break;
    float v = 0.f;
#pragma unroll
    for (int wi = 0; wi < kGemvWarps; ++wi) v += red[(wi * ROWS + r) * kGemvColumns + threadIdx.x];
    if (gridDim.z == 1) {
      if (p.bias != nullptr) v += load_float(p.bias, n, p.bias_type);
      static_cast<T*>(p.y)[static_cast<int64_t>(m) * p.n + n] = FloatConvert<T>::from_float(v);
    } else {
      p.workspace[(static_cast<int64_t>(blockIdx.z) * p.m + m) * p.n + n] = v;
    }
  }
}

template <typename T, int BITS>
void launch_gemv_typed(const FusedGemmParams& p, int rows_per_cta, dim3 grid, cudaStream_t stream) {
  const dim3 block(kGemvThreads);
  switch (rows_per_cta) {
    case 1: GPTQ_LAUNCH(grid, block, 0, stream, gemv_kernel<T, BITS, 1>)(p); break;
    case 2: GPTQ_LAUNCH(grid, block, 0, stream, gemv_kernel<T, BITS, 2>)(p); break;
    case 4: GPTQ_LAUNCH(grid, block, 0, stream, gemv_kernel<T, BITS, 4>)(p); break;
    default: GPTQ_LAUNCH(grid, block, 0, stream, gemv_kernel<T, BITS, 8>)(p); break;
  }
}

template <int BITS>
void launch_gemv(const FusedGemmParams& p, ActType type, int rows_per_cta, dim3 grid, cudaStream_t stream) {
  if (type == ActType::kHalf) {
    launch_gemv_typed<__half, BITS>(p, rows_per_cta, grid, stream);
  } else {
    launch_gemv_typed<__nv_bfloat16, BITS>(p, rows_per_cta, grid, stream);
  }
}

}  // namespace cuda
}  // namespace gptq_kernels
