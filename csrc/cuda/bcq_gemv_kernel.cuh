// The body of the BCQ lookup-table kernel (design: bcq.cuh) and its launcher. Include only from the
// bcq_gemv_<planes>planes.cu files that instantiate it.
#pragma once
#include "cuda/bcq.cuh"

namespace gptq_kernels {
namespace cuda {

// Blocks whose plane words one thread loads before looking any of them up: 128 bytes in flight per thread with
// 2 planes (4 blocks x 2 x 16 B), 96 with 3.
template <int PLANES>
constexpr int bcq_blocks_in_flight() {
  return PLANES == 2 ? 4 : 2;
}

template <typename T, int PLANES, int ROWS>
__global__ void __launch_bounds__(kBcqThreads) bcq_gemv_kernel(const BcqGemvParams p) {
  static_assert(ROWS >= 1 && ROWS <= kBcqMaxRowsPerCta, "ROWS out of range");
  constexpr int kInFlight = bcq_blocks_in_flight<PLANES>();
  static_assert(kBcqBlocksPerWarpStage % kInFlight == 0, "a stage must hold whole load batches");
  constexpr int kStageTables = kBcqStageBlocks * kBcqTablesPerBlock;
  constexpr unsigned kFullMask = 0xffffffffu;

  // tables[r][table][entry] of this stage, then reused for the cross-warp reduction at the end, which needs
  // kBcqWarps * ROWS * kBcqColumns floats (a quarter of it).
  static_assert(kBcqWarps * kBcqColumns <= kBcqStageFloats, "reduction buffer must fit in the tables");
  __shared__ __align__(16) float tables[ROWS * kBcqStageFloats];
  __shared__ float x_sums[ROWS * kBcqStageBlocks];  // sum of x over each block of the stage, per row

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = blockIdx.x * ROWS;
  const int n_tile = blockIdx.y * kBcqColumns;
  // Threads past N (N is a multiple of 32, not of 128) work on the last valid outputs and discard the result,
  // so every thread reaches every barrier and no load needs a guard.
  const int n0 = min(n_tile + lane * kBcqColumnsPerThread, p.n - kBcqColumnsPerThread);
  const int kblocks = p.k / core::kBlockValues;
  const int kb_begin = blockIdx.z * p.blocks_per_cta;
  const int kb_end = min(kb_begin + p.blocks_per_cta, kblocks);
  const int64_t plane_stride = static_cast<int64_t>(kblocks) * p.n;
  const T* x = static_cast<const T*>(p.x);

  float out[ROWS][kBcqColumnsPerThread];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
#pragma unroll
    for (int c = 0; c < kBcqColumnsPerThread; ++c) out[r][c] = 0.f;
  }
  int current_group = -1;
  float alpha[PLANES][kBcqColumnsPerThread] = {}, offset[kBcqColumnsPerThread] = {};

  for (int stage = kb_begin; stage < kb_end; stage += kBcqStageBlocks) {
    __syncthreads();  // every warp is done with the previous stage's tables
    // Tables: thread pair (2t, 2t+1) builds table t (inputs 4t .. 4t+3 of the stage), entries 0-7 and 8-15.
#pragma unroll 1
    for (int r = 0; r < ROWS; ++r) {
#pragma unroll
      for (int t = threadIdx.x; t < 2 * kStageTables; t += kBcqThreads) {
        const int table = t >> 1, half = t & 1;
        const int64_t k0 = static_cast<int64_t>(stage) * core::kBlockValues + table * 4;
        float xv[4] = {0.f, 0.f, 0.f, 0.f};
        if (row0 + r < p.m && k0 < static_cast<int64_t>(kb_end) * core::kBlockValues) {
#pragma unroll
          for (int q = 0; q < 4; ++q) xv[q] = FloatConvert<T>::to_float(x[(row0 + r) * p.ldx + k0 + q]);
        }
        float e[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) e[j] = core::bcq_table_entry(xv, 4, static_cast<uint32_t>(half * 8 + j));
        float4* dst = reinterpret_cast<float4*>(tables + r * kBcqStageFloats + table * kBcqTableEntries + half * 8);
        dst[0] = make_float4(e[0], e[1], e[2], e[3]);
        dst[1] = make_float4(e[4], e[5], e[6], e[7]);
        // Entry 15 (all signs +) is the sum of the table's 4 inputs. A block's 8 tables belong to the odd lanes of
        // one aligned group of 16 lanes (t = threadIdx.x + a multiple of 128), and XOR-shuffles by 2, 4 and 8 stay
        // among those lanes: after them every odd lane holds its block's sum of x.
        float s = e[7];
        s += __shfl_xor_sync(kFullMask, s, 2);
        s += __shfl_xor_sync(kFullMask, s, 4);
        s += __shfl_xor_sync(kFullMask, s, 8);
        if ((t & 15) == 1) x_sums[r * kBcqStageBlocks + table / kBcqTablesPerBlock] = s;
      }
    }
    __syncthreads();

#pragma unroll
    for (int u0 = 0; u0 < kBcqBlocksPerWarpStage; u0 += kInFlight) {
      // Issue every load of the batch before looking any of it up.
      uint4 w[kInFlight][PLANES];
#pragma unroll
      for (int i = 0; i < kInFlight; ++i) {
        const int b = stage + (u0 + i) * kBcqWarps + warp;
        if (b < kb_end) {
#pragma unroll
          for (int pl = 0; pl < PLANES; ++pl) {
            w[i][pl] = __ldg(reinterpret_cast<const uint4*>(p.qplanes + pl * plane_stride +
                                                            static_cast<int64_t>(b) * p.n + n0));
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kInFlight; ++i) {
        const int b = stage + (u0 + i) * kBcqWarps + warp;
        if (b >= kb_end) break;  // warp-uniform
        const int g = min(static_cast<int>(core::bcq_block_group(b, p.group_size)), p.groups - 1);
        if (g != current_group) {  // warp-uniform; at most once per group and warp
#pragma unroll
          for (int c = 0; c < kBcqColumnsPerThread; ++c) {
#pragma unroll
            for (int pl = 0; pl < PLANES; ++pl) {
              alpha[pl][c] = load_float(p.alpha, (static_cast<int64_t>(g) * PLANES + pl) * p.n + n0 + c, p.alpha_type);
            }
            offset[c] = load_float(p.offset, static_cast<int64_t>(g) * p.n + n0 + c, p.offset_type);
          }
          current_group = g;
        }
        const float* tb = tables + (b - stage) * kBcqTablesPerBlock * kBcqTableEntries;
#pragma unroll
        for (int pl = 0; pl < PLANES; ++pl) {
          const uint32_t words[kBcqColumnsPerThread] = {w[i][pl].x, w[i][pl].y, w[i][pl].z, w[i][pl].w};
          float acc[ROWS][kBcqColumnsPerThread];
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
#pragma unroll
            for (int c = 0; c < kBcqColumnsPerThread; ++c) acc[r][c] = 0.f;
          }
#pragma unroll
          for (int q = 0; q < kBcqTablesPerBlock; ++q) {
#pragma unroll
            for (int c = 0; c < kBcqColumnsPerThread; ++c) {
              const uint32_t e = core::plane_nibble(words[c], q);
#pragma unroll
              for (int r = 0; r < ROWS; ++r) acc[r][c] += tb[r * kBcqStageFloats + q * kBcqTableEntries + e];
            }
          }
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
#pragma unroll
            for (int c = 0; c < kBcqColumnsPerThread; ++c) out[r][c] = fmaf(alpha[pl][c], acc[r][c], out[r][c]);
          }
        }
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          const float xs = x_sums[r * kBcqStageBlocks + b - stage];
#pragma unroll
          for (int c = 0; c < kBcqColumnsPerThread; ++c) out[r][c] = fmaf(offset[c], xs, out[r][c]);
        }
      }
    }
  }

  // Cross-warp reduction: red[warp][r][output in tile], then thread t sums output t over the warps.
  __syncthreads();  // every warp is done reading the tables
  float* red = tables;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    *reinterpret_cast<float4*>(red + (warp * ROWS + r) * kBcqColumns + lane * kBcqColumnsPerThread) =
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
    for (int wi = 0; wi < kBcqWarps; ++wi) v += red[(wi * ROWS + r) * kBcqColumns + threadIdx.x];
    if (gridDim.z == 1) {
      if (p.bias != nullptr) v += load_float(p.bias, n, p.bias_type);
      static_cast<T*>(p.y)[static_cast<int64_t>(m) * p.n + n] = FloatConvert<T>::from_float(v);
    } else {
      p.workspace[(static_cast<int64_t>(blockIdx.z) * p.m + m) * p.n + n] = v;
    }
  }
}

template <typename T, int PLANES>
void launch_bcq_gemv_typed(const BcqGemvParams& p, int rows_per_cta, dim3 grid, cudaStream_t stream) {
  const dim3 block(kBcqThreads);
  switch (rows_per_cta) {
    case 1: GPTQ_LAUNCH(grid, block, 0, stream, bcq_gemv_kernel<T, PLANES, 1>)(p); break;
    case 2: GPTQ_LAUNCH(grid, block, 0, stream, bcq_gemv_kernel<T, PLANES, 2>)(p); break;
    default: GPTQ_LAUNCH(grid, block, 0, stream, bcq_gemv_kernel<T, PLANES, 4>)(p); break;
  }
}

template <int PLANES>
void launch_bcq_gemv(const BcqGemvParams& p, FloatType x_type, int rows_per_cta, dim3 grid, cudaStream_t stream) {
  switch (x_type) {
    case FloatType::kHalf: launch_bcq_gemv_typed<__half, PLANES>(p, rows_per_cta, grid, stream); break;
    case FloatType::kBFloat16: launch_bcq_gemv_typed<__nv_bfloat16, PLANES>(p, rows_per_cta, grid, stream); break;
    default: launch_bcq_gemv_typed<float, PLANES>(p, rows_per_cta, grid, stream);
  }
}

}  // namespace cuda
}  // namespace gptq_kernels
