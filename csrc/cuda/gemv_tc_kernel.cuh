// The body of the tensor-core GEMV (see gemv_tc.cuh for the design) and its launcher. Include only from the
// gemv_tc_<bits>bit.cu files that instantiate it.
#pragma once
#include <climits>
#include <type_traits>

#include "cuda/gemv_tc.cuh"
#include "cuda/lane_decode.cuh"
#include "cuda/mma_ops.cuh"

namespace gptq_kernels {
namespace cuda {

// BPG (gemv_tc_group_class): how groups fall on blocks. 1 or 2: every group is exactly that many blocks;
// gemv_tc_batch_blocks(BITS): a group boundary never falls inside a load batch (groups of a multiple of its
// blocks, or one group). Batches start at multiples of their size, so a group can change only at compile-time
// positions of a batch.
// ROW_TILES: 8-row tiles of x (1 or 2).
template <typename T, int BITS, int BPG, int ROW_TILES>
__global__ void __launch_bounds__(kGemvTcThreads, gemv_tc_ctas_per_sm(ROW_TILES))
    gemv_tc_kernel(const FusedGemmParams p) {
  using Decode = std::conditional_t<BITS == 3, ThreeBitDecode<T>, InPlaceDecode<T, BITS>>;
  constexpr int kRun = Decode::kRun;
  constexpr int kInFlight = gemv_tc_batch_blocks(BITS);
  constexpr int kBatches = kGemvTcStageBlocks / kInFlight;
  static_assert(kBatches * kInFlight == kGemvTcStageBlocks && kBatches % 2 == 0,
                "a stage must hold an even number of whole load batches");
  static_assert(BPG == 1 || BPG == 2 || BPG == kInFlight, "group changes must fall on fixed batch positions");
  static_assert(kInFlight % BPG == 0, "a batch must hold whole groups or none");
  constexpr int kRows = ROW_TILES * kGemvTcTileRows;
  constexpr int kRowStride = gemv_tc_row_stride(BITS);
  constexpr int kStageElems = kRows * kRowStride;
  constexpr int kChunksPerRow = kGemvTcStageBlocks * core::kBlockValues * 2 / 16;  // 16-byte pieces: 64
  constexpr int kCopies = kRows * kChunksPerRow / kGemvTcThreads;                   // per thread and stage: 4, 8
  static_assert(kCopies * kGemvTcThreads == kRows * kChunksPerRow, "x stage pieces must spread evenly");
  __shared__ __align__(16) T xs[2 * kStageElems];  // x [buffer][kRows][kRowStride]; rows past M are zeros

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int fg = lane / 4, ft = lane % 4;  // fragment coordinates (MmaOps)
  const int kblocks = p.k / core::kBlockValues;
  const int kb_begin = blockIdx.z * p.blocks_per_cta;  // a multiple of kInFlight (plan_gemm)
  const int kb_end = min(kb_begin + p.blocks_per_cta, kblocks);
  // Warps past N (a multiple of 32) redo the last strip of 32 columns and write nothing, so that every thread
  // reaches every barrier and no load needs a guard.
  const int warp_n = blockIdx.y * kGemvTcColumns + warp * kGemvTcWarpColumns;
  const bool writes = warp_n < p.n;
  const int n0 = min(warp_n, p.n - kGemvTcWarpColumns) + 4 * fg;  // this lane's columns n0..n0+3
  const T* x = static_cast<const T*>(p.x);

  // Copies the x of blocks [first, first + 16) of every row into `buffer`; pieces past M or past this CTA's K
  // range are zero-filled without a read.
  auto stage_x = [&](int buffer, int first) {
#pragma unroll
    for (int i = 0; i < kCopies; ++i) {
      const int c = tid + i * kGemvTcThreads, r = c / kChunksPerRow, kc = c % kChunksPerRow;
      const int64_t k = static_cast<int64_t>(first) * core::kBlockValues + kc * 8;
      const bool valid = r < p.m && k < static_cast<int64_t>(kb_end) * core::kBlockValues;
      cp_async_16(xs + buffer * kStageElems + r * kRowStride + kc * 8, valid ? x + r * p.ldx + k : x, valid);
    }
    cp_async_commit();
  };

  // The fragment-order word of this lane's t (4-bit: word t; 2-bit: word t / 2, half t % 2) of every block for
  // this lane's 4 columns: one 16-byte load per block, walked with a pointer; 3-bit (checkpoint order), the two
  // words holding stream bits 24t..24t+23 (ThreeBitDecode): two 16-byte loads. Nothing touches the loaded words
  // before their batch is decoded (an instruction using them would wait for memory right there).
  constexpr int kRegsPerBlock = BITS == 3 ? 8 : 4;
  const int64_t block_stride = static_cast<int64_t>(BITS) * p.n;  // words from one block to the next
  const int64_t second_word = static_cast<int64_t>(lane_second_word_step<BITS>(ft)) * p.n;
  const uint32_t* next_block = p.qweight + static_cast<int64_t>(kb_begin) * block_stride +
                               static_cast<int64_t>(lane_first_word<BITS>(ft)) * p.n + n0;
  auto load_block = [&](uint32_t (&dst)[kRegsPerBlock]) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(next_block));
    dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
    if constexpr (BITS == 3) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(next_block + second_word));
      dst[4] = u.x, dst[5] = u.y, dst[6] = u.z, dst[7] = u.w;
    }
    next_block += block_stride;
  };
  // The words of blocks [first, first + kInFlight), those before kb_end.
  auto load_batch = [&](uint32_t (&dst)[kInFlight][kRegsPerBlock], int first) {
    if (first + kInFlight <= kb_end) {
#pragma unroll
      for (int i = 0; i < kInFlight; ++i) load_block(dst[i]);
    } else {
#pragma unroll
      for (int i = 0; i < kInFlight; ++i) {
        if (first + i < kb_end) load_block(dst[i]);
      }
    }
  };

  uint32_t multipliers[kRun];
  Decode::multipliers(multipliers);
  uint32_t offset[4][kRun];  // per column of this lane: the decode's offset pairs for the group's zero point
  float scale[4];         // per column of this lane: the group's scale
  // Accumulators of A tile j and row tile r: [0] column 4g + 2j, batch row 8r + 2t; [1] same column, row
  // 8r + 2t + 1; [2] and [3] the same for column 4g + 2j + 1.
  float acc[2][ROW_TILES][4];  // sum of x (q - zero) within the current group
  float out[2][ROW_TILES][4];  // sum over finished groups of scale * acc
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int r = 0; r < ROW_TILES; ++r) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][r][i] = out[j][r][i] = 0.f;
    }
  }
  auto finish_group = [&]() {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int r = 0; r < ROW_TILES; ++r) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          out[j][r][i] = fmaf(scale[2 * j + i / 2], acc[j][r][i], out[j][r][i]);
          acc[j][r][i] = 0.f;
        }
      }
    }
  };
  auto start_group = [&](const RawGroup& raw) {
    uint32_t h[4];
    lane_zero_points<T, BITS>(raw, n0, h);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      scale[c] = raw_scale(raw.scales, c, p.scale_type);
      Decode::offsets(h[c], offset[c]);
    }
  };

  // Block `slot` of the stage in `buffer`, with its words w, into acc.
  auto multiply_block = [&](const uint32_t (&w)[kRegsPerBlock], int buffer, int slot) {
    // B fragments of both 16-row steps per row tile r, for batch row 8r + g: pair p of the lane's rows of the block
    // in xb[r][p]. Fragment order (rows 8p + 2t..): ldmatrix of x rows 8r..8r+7 and K columns 8p..8p+7 of the
    // block, row addresses from lanes 8p..8p+7. 3-bit (rows 8t + 2p..): the lane's 8 consecutive values.
    uint32_t xb[ROW_TILES][4];
#pragma unroll
    for (int r = 0; r < ROW_TILES; ++r) {
      if constexpr (BITS == 3) {
        const uint4 v = *reinterpret_cast<const uint4*>(xs + buffer * kStageElems +
                                                        (r * kGemvTcTileRows + fg) * kRowStride +
                                                        slot * core::kBlockValues + 8 * ft);
        xb[r][0] = v.x, xb[r][1] = v.y, xb[r][2] = v.z, xb[r][3] = v.w;
      } else {
        ldmatrix_x4(xb[r], xs + buffer * kStageElems + (r * kGemvTcTileRows + lane % 8) * kRowStride +
                               slot * core::kBlockValues + (lane / 8) * 8);
      }
    }
    uint32_t values[4][Decode::kValueRegs];
#pragma unroll
    for (int c = 0; c < 4; ++c) Decode::lane_values(w[c], w[BITS == 3 ? 4 + c : c], ft, values[c]);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      // A tile j: rows g and g + 8 are columns 4g + 2j and 4g + 2j + 1; pairs 2s and 2s + 1 are step s's
      // registers for rows 2t.. and 2t + 8.. of the step.
      uint32_t a[2][4];
      a[0][0] = Decode::template decode<0>(values[2 * j], multipliers, offset[2 * j]);
      a[0][1] = Decode::template decode<0>(values[2 * j + 1], multipliers, offset[2 * j + 1]);
      a[0][2] = Decode::template decode<1>(values[2 * j], multipliers, offset[2 * j]);
      a[0][3] = Decode::template decode<1>(values[2 * j + 1], multipliers, offset[2 * j + 1]);
      a[1][0] = Decode::template decode<2>(values[2 * j], multipliers, offset[2 * j]);
      a[1][1] = Decode::template decode<2>(values[2 * j + 1], multipliers, offset[2 * j + 1]);
      a[1][2] = Decode::template decode<3>(values[2 * j], multipliers, offset[2 * j]);
      a[1][3] = Decode::template decode<3>(values[2 * j + 1], multipliers, offset[2 * j + 1]);
#pragma unroll
      for (int r = 0; r < ROW_TILES; ++r) {
        MmaOps<T>::mma(acc[j][r], a[0], xb[r][0], xb[r][1]);
        MmaOps<T>::mma(acc[j][r], a[1], xb[r][2], xb[r][3]);
      }
    }
  };

  GroupWalk<BITS> groups(p, kb_begin, n0);
  start_group(groups.first());

  // Batch `first` of the stage in `buffer`: decodes `words` (loaded a batch ago) after sending out the loads of
  // the next batch into `next`.
  auto run_batch = [&](const uint32_t (&words)[kInFlight][kRegsPerBlock], uint32_t (&next)[kInFlight][kRegsPerBlock],
                       int buffer, int first, int slot) {
    load_batch(next, first + kInFlight);
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) {
      const int b = first + i;
      if (b >= kb_end) break;  // uniform across the CTA
      if (i % BPG == 0 && groups.starts_at(b)) {
        finish_group();
        start_group(groups.next());
        groups.advance();
      }
      multiply_block(words[i], buffer, slot + i);
    }
  };

  // Two register sets of words take turns (a stage holds an even number of batches, so every stage starts with
  // set 0).
  uint32_t words[2][kInFlight][kRegsPerBlock];
  stage_x(0, kb_begin);
  load_batch(words[0], kb_begin);
  for (int stage = kb_begin; stage < kb_end; stage += kGemvTcStageBlocks) {
    const int buffer = (stage - kb_begin) / kGemvTcStageBlocks % 2;
    cp_async_wait<0>();  // this thread's pieces of the stage have landed
    // Everyone's pieces are visible, and every warp is done with the other buffer, which is refilled next.
    __syncthreads();
    if (stage + kGemvTcStageBlocks < kb_end) stage_x(buffer ^ 1, stage + kGemvTcStageBlocks);
#pragma unroll 1
    for (int u = 0; u < kBatches; u += 2) {
      const int first = stage + u * kInFlight;
      if (first >= kb_end) break;  // uniform across the CTA
      run_batch(words[0], words[1], buffer, first, u * kInFlight);
      if (first + kInFlight >= kb_end) break;
      run_batch(words[1], words[0], buffer, first + kInFlight, (u + 1) * kInFlight);
    }
  }
  finish_group();

  // Lane (g, t) holds columns n0..n0+3 of batch rows 8r + 2t and 8r + 2t + 1.
  if (!writes) return;
#pragma unroll
  for (int rh = 0; rh < 2 * ROW_TILES; ++rh) {
    const int r = rh / 2, h = rh % 2, m = r * kGemvTcTileRows + 2 * ft + h;
    if (m >= p.m) continue;
    float v[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) v[c] = out[c / 2][r][(c % 2) * 2 + h];
    if (gridDim.z == 1) {
      if (p.bias != nullptr) {
#pragma unroll
        for (int c = 0; c < 4; ++c) v[c] += load_float(p.bias, n0 + c, p.bias_type);
      }
      uint2 packed;
      packed.x = MmaOps<T>::pack2(v[0], v[1]);
      packed.y = MmaOps<T>::pack2(v[2], v[3]);
      *reinterpret_cast<uint2*>(static_cast<T*>(p.y) + static_cast<int64_t>(m) * p.n + n0) = packed;
    } else {
      *reinterpret_cast<float4*>(p.workspace + (static_cast<int64_t>(blockIdx.z) * p.m + m) * p.n + n0) =
          make_float4(v[0], v[1], v[2], v[3]);
    }
  }
}

template <typename T, int BITS, int ROW_TILES>
void launch_gemv_tc_rows(const FusedGemmParams& p, dim3 grid, cudaStream_t stream) {
  constexpr int kBatch = gemv_tc_batch_blocks(BITS);
  switch (gemv_tc_group_class(p.group_size, p.k, BITS)) {
    case 1: GPTQ_LAUNCH(grid, kGemvTcThreads, 0, stream, gemv_tc_kernel<T, BITS, 1, ROW_TILES>)(p); break;
    case 2: GPTQ_LAUNCH(grid, kGemvTcThreads, 0, stream, gemv_tc_kernel<T, BITS, 2, ROW_TILES>)(p); break;
    default: GPTQ_LAUNCH(grid, kGemvTcThreads, 0, stream, gemv_tc_kernel<T, BITS, kBatch, ROW_TILES>)(p);
  }
}

template <typename T, int BITS>
void launch_gemv_tc_typed(const FusedGemmParams& p, dim3 grid, cudaStream_t stream) {
  if (p.m <= kGemvTcTileRows) {
    launch_gemv_tc_rows<T, BITS, 1>(p, grid, stream);
  } else {
    launch_gemv_tc_rows<T, BITS, 2>(p, grid, stream);
  }
}

template <int BITS>
void launch_gemv_tc(const FusedGemmParams& p, ActType type, dim3 grid, cudaStream_t stream) {
  if (type == ActType::kHalf) {
    launch_gemv_tc_typed<__half, BITS>(p, grid, stream);
  } else {
    launch_gemv_tc_typed<__nv_bfloat16, BITS>(p, grid, stream);
  }
}

}  // namespace cuda
}  // namespace gptq_kernels
