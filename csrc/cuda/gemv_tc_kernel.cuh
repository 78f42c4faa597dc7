// The body of the tensor-core GEMV (see gemv_tc.cuh for the design) and its launcher. Include only from the
// gemv_tc_<bits>bit.cu files that instantiate it.
#pragma once
#include <climits>

#include "cuda/gemv_tc.cuh"
#include "cuda/mma_ops.cuh"

namespace gptq_kernels {
namespace cuda {

// A group's scales and zero points for one lane's 4 columns, as stored: loaded a group ahead, so that a group
// change converts registers instead of waiting for memory.
struct RawGroup {
  uint4 scales;    // 4 x fp32, or 4 x 16 bits in .x and .y (fp16, bf16)
  uint32_t zeros;  // the qzeros word holding the 4 columns' zero points (minus one)
};

// Walks one lane's scales and zeros group by group with two pointers (no 64-bit index maths per group), staying
// on the last group once it is reached.
template <int BITS>
class GroupStream {
 public:
  __device__ __forceinline__ GroupStream(const FusedGemmParams& p, int group, int n0)
      : group_(group), groups_(p.groups), fp32_(p.scale_type == FloatType::kFloat) {
    const int64_t scale_bytes = fp32_ ? 4 : 2;
    scale_row_ = p.n * scale_bytes;
    zero_row_ = p.n / (32 / BITS);
    scales_ = static_cast<const unsigned char*>(p.scales) + (static_cast<int64_t>(group) * p.n + n0) * scale_bytes;
    zeros_ = p.qzeros + static_cast<int64_t>(group) * zero_row_ + n0 / (32 / BITS);
  }
  // Scales: 4 consecutive values at a multiple of 4 columns, 8- or 16-byte aligned (plan_gemm checks the base).
  __device__ __forceinline__ RawGroup load() const {
    RawGroup r;
    if (fp32_) {
      r.scales = __ldg(reinterpret_cast<const uint4*>(scales_));
    } else {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(scales_));
      r.scales = make_uint4(v.x, v.y, 0u, 0u);
    }
    r.zeros = __ldg(zeros_);
    return r;
  }
  __device__ __forceinline__ void advance() {
    if (group_ + 1 < groups_) ++group_, scales_ += scale_row_, zeros_ += zero_row_;
  }

 private:
  int group_, groups_;
  bool fp32_;
  int64_t scale_row_, zero_row_;
  const unsigned char* scales_;
  const uint32_t* zeros_;
};

__device__ __forceinline__ float raw_scale(const uint4& s, int c, FloatType type) {
  const uint32_t w[4] = {s.x, s.y, s.z, s.w};
  if (type == FloatType::kFloat) return __uint_as_float(w[c]);
  const uint32_t bits16 = (w[c / 2] >> (16 * (c % 2))) & 0xffffu;
  if (type == FloatType::kBFloat16) return __uint_as_float(bits16 << 16);
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits16)));
}

// The decode of FragmentOrderDecode (mma_ops.cuh) with an offset pair per position instead of per parity: lane
// t's values of one column and block sit in a register with pair p's low value at bit BITS p of the low half and
// its high value at the same bit of the high half. Runs of kRun pairs decode in place: pair p is masked at
// position BITS (p % kRun) after a shift by BITS kRun (p / kRun) (none at all for 2-bit fp16), and one HFMA2 with
// multiplier 2^-position and that position's offset pair leaves q - zero exactly. A value at position s needs
// s + BITS mantissa bits, hence kRun.
template <typename T, int BITS>
struct InPlaceDecode {
  using Magic = MagicPair<T>;
  static constexpr int kRun = Magic::kMantissaBits / BITS < 4 ? Magic::kMantissaBits / BITS : 4;

  // Multipliers (2^-position in both halves), built once.
  static __device__ __forceinline__ void multipliers(uint32_t (&m)[kRun]) {
#pragma unroll
    for (int r = 0; r < kRun; ++r) {
      const float f = 1.f / static_cast<float>(1 << (BITS * r));
      m[r] = MmaOps<T>::pack2(f, f);
    }
  }
  // Offset pairs -(magic 2^-position + z), exact in T, for a zero point z given as h = magic + z in both halves
  // (z ORed into the mantissas): -h + (magic - magic 2^-position), one HFMA2 each.
  static __device__ __forceinline__ void offsets(uint32_t h, uint32_t (&o)[kRun]) {
    const uint32_t minus_one = MmaOps<T>::pack2(-1.f, -1.f);
#pragma unroll
    for (int r = 0; r < kRun; ++r) {
      const float c = Magic::kValue - Magic::kValue / static_cast<float>(1 << (BITS * r));
      o[r] = magic_fma<T>(h, minus_one, MmaOps<T>::pack2(c, c));
    }
  }
  template <int P>
  static __device__ __forceinline__ uint32_t decode(uint32_t values, const uint32_t (&multiplier)[kRun],
                                                    const uint32_t (&offset)[kRun]) {
    constexpr int kPosition = BITS * (P % kRun), kShift = BITS * kRun * (P / kRun);
    constexpr uint32_t kMask = (core::value_mask(BITS) * 0x10001u) << kPosition;
    const uint32_t h = and_or(kShift == 0 ? values : values >> kShift, kMask, Magic::kBits);
    return magic_fma<T>(h, multiplier[P % kRun], offset[P % kRun]);
  }
};

// BPG: how groups fall on blocks. 1 or 2: every group is exactly that many blocks; 4: a group boundary never
// falls inside an aligned run of 4 blocks (groups of a multiple of 4 blocks, or one group). Load batches are
// 4 blocks starting at multiples of 4, so a group can change only at compile-time positions of a batch.
// ROW_TILES: 8-row tiles of x (1 or 2).
template <typename T, int BITS, int BPG, int ROW_TILES>
__global__ void __launch_bounds__(kGemvTcThreads, gemv_tc_ctas_per_sm(ROW_TILES))
    gemv_tc_kernel(const FusedGemmParams p) {
  using Decode = InPlaceDecode<T, BITS>;
  constexpr int kRun = Decode::kRun;
  constexpr int kInFlight = kGemvTcBatchBlocks;
  constexpr int kBatches = kGemvTcStageBlocks / kInFlight;
  static_assert(kBatches * kInFlight == kGemvTcStageBlocks && kBatches % 2 == 0,
                "a stage must hold an even number of whole load batches");
  static_assert(BPG == 1 || BPG == 2 || BPG == kInFlight, "group changes must fall on fixed batch positions");
  constexpr int kRows = ROW_TILES * kGemvTcTileRows;
  constexpr int kStageElems = kRows * kGemvTcRowStride;
  constexpr int kChunksPerRow = kGemvTcStageBlocks * core::kBlockValues * 2 / 16;  // 16-byte pieces: 64
  constexpr int kCopies = kRows * kChunksPerRow / kGemvTcThreads;                   // per thread and stage: 4, 8
  static_assert(kCopies * kGemvTcThreads == kRows * kChunksPerRow, "x stage pieces must spread evenly");
  __shared__ __align__(16) T xs[2 * kStageElems];  // x [buffer][kRows][512 + 8]; rows past M are zeros

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
      cp_async_16(xs + buffer * kStageElems + r * kGemvTcRowStride + kc * 8, valid ? x + r * p.ldx + k : x, valid);
    }
    cp_async_commit();
  };

  // The fragment-order word of this lane's t (4-bit: word t; 2-bit: word t / 2, half t % 2) of every block for
  // this lane's 4 columns: one 16-byte load per block, walked with a pointer. At 2 bits the lane keeps only its
  // halves, two columns per register: bytes [low values of column 2i, of column 2i + 1, high values of 2i, of
  // 2i + 1], so column 2i decodes from the register as it is and column 2i + 1 after a shift by 8.
  constexpr int kRegsPerBlock = BITS == 2 ? 2 : 4;
  const int64_t block_stride = static_cast<int64_t>(BITS) * p.n;  // words from one block to the next
  const uint32_t* next_block =
      p.qweight + static_cast<int64_t>(kb_begin) * block_stride + static_cast<int64_t>(BITS == 4 ? ft : ft / 2) * p.n + n0;
  const uint32_t half_selector = ft % 2 ? 0x7362u : 0x5140u;
  auto load_block = [&](uint32_t (&dst)[kRegsPerBlock]) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(next_block));
    if constexpr (BITS == 2) {
      dst[0] = __byte_perm(v.x, v.y, half_selector);
      dst[1] = __byte_perm(v.z, v.w, half_selector);
    } else {
      dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
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
  // Lane t's values of column c of a block, pair p at bits BITS p and 16 + BITS p (other bits are masked off).
  auto column_values = [](const uint32_t (&w)[kRegsPerBlock], int c) -> uint32_t {
    if constexpr (BITS == 2) return c % 2 ? w[c / 2] >> 8 : w[c / 2];
    return w[c];
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
    // The lane's 4 zero points (stored minus one) at bits BITS c of both halves.
    const uint32_t zeros = (raw.zeros + core::ones_per_field(BITS)) >> (BITS * (n0 % (32 / BITS)));
    const uint32_t both_halves = __byte_perm(zeros, 0u, BITS == 4 ? 0x1010u : 0x4040u);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      scale[c] = raw_scale(raw.scales, c, p.scale_type);
      const uint32_t h = and_or(both_halves >> (BITS * c), core::value_mask(BITS) * 0x10001u, MagicPair<T>::kBits);
      Decode::offsets(h, offset[c]);
    }
  };

  // Block `slot` of the stage in `buffer`, with its words w, into acc.
  auto multiply_block = [&](const uint32_t (&w)[kRegsPerBlock], int buffer, int slot) {
    // B fragments of both 16-row steps per row tile r: x rows 8r..8r+7 of K columns 8i..8i+7 of the block from
    // lanes 8i..8i+7.
    uint32_t xb[ROW_TILES][4];
#pragma unroll
    for (int r = 0; r < ROW_TILES; ++r) {
      ldmatrix_x4(xb[r], xs + buffer * kStageElems + (r * kGemvTcTileRows + lane % 8) * kGemvTcRowStride +
                             slot * core::kBlockValues + (lane / 8) * 8);
    }
    uint32_t values[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) values[c] = column_values(w, c);
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

  // The group of block b is b / blocks_per_group (clamped into [0, groups)), counted forward; the next group's
  // scales and zeros are always on their way.
  const int blocks_per_group = p.group_size == -1 ? INT_MAX : p.group_size / core::kBlockValues;
  const int group = p.group_size == -1 ? 0 : kb_begin / blocks_per_group;  // the CTA's first
  int next_group_block = p.group_size == -1 ? INT_MAX : (group + 1) * blocks_per_group;
  GroupStream<BITS> group_stream(p, min(group, p.groups - 1), n0);
  start_group(group_stream.load());
  group_stream.advance();
  RawGroup next_raw = group_stream.load();

  // Batch `first` of the stage in `buffer`: decodes `words` (loaded a batch ago) after sending out the loads of
  // the next batch into `next`.
  auto run_batch = [&](const uint32_t (&words)[kInFlight][kRegsPerBlock], uint32_t (&next)[kInFlight][kRegsPerBlock],
                       int buffer, int first, int slot) {
    load_batch(next, first + kInFlight);
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) {
      const int b = first + i;
      if (b >= kb_end) break;  // uniform across the CTA
      if (i % BPG == 0 && b == next_group_block) {
        finish_group();
        start_group(next_raw);
        next_group_block += blocks_per_group;
        group_stream.advance();
        next_raw = group_stream.load();
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
  switch (gemv_tc_group_class(p.group_size, p.k)) {
    case 1: GPTQ_LAUNCH(grid, kGemvTcThreads, 0, stream, gemv_tc_kernel<T, BITS, 1, ROW_TILES>)(p); break;
    case 2: GPTQ_LAUNCH(grid, kGemvTcThreads, 0, stream, gemv_tc_kernel<T, BITS, 2, ROW_TILES>)(p); break;
    default: GPTQ_LAUNCH(grid, kGemvTcThreads, 0, stream, gemv_tc_kernel<T, BITS, kGemvTcBatchBlocks, ROW_TILES>)(p);
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
