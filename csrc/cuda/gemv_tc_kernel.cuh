// The body of the tensor-core GEMV (see gemv_tc.cuh for the design) and its launcher. Include only from the
// gemv_tc_<bits>bit.cu files that instantiate it.
#pragma once
#include <climits>
#include <type_traits>

#include "cuda/gemv_tc.cuh"
#include "cuda/mma_ops.cuh"

namespace gptq_kernels {
namespace cuda {

// A group's scales and zero points for one lane's 4 columns, as stored: loaded a group ahead, so that a group
// change converts registers instead of waiting for memory.
struct RawGroup {
  uint4 scales;    // 4 x fp32, or 4 x 16 bits in .x and .y (fp16, bf16)
  uint32_t zeros;  // the qzeros word holding the 4 columns' zero points (minus one)
  uint32_t zeros_next;  // 3-bit: the next word, where the 4 zero points reach into it
};

// Walks one lane's scales and zeros group by group with two pointers (no 64-bit index maths per group), staying
// on the last group once it is reached.
template <int BITS>
class GroupStream {
 public:
  __device__ __forceinline__ GroupStream(const FusedGemmParams& p, int group, int n0)
      : group_(group), groups_(p.groups), fp32_(p.scale_type == FloatType::kFloat),
        zeros_straddle_(BITS == 3 && zero_shift(n0) + 4 * BITS > 32) {
    const int64_t scale_bytes = fp32_ ? 4 : 2;
    scale_row_ = p.n * scale_bytes;
    zero_row_ = p.n * BITS / 32;
    scales_ = static_cast<const unsigned char*>(p.scales) + (static_cast<int64_t>(group) * p.n + n0) * scale_bytes;
    zeros_ = p.qzeros + static_cast<int64_t>(group) * zero_row_ + static_cast<int64_t>(n0) * BITS / 32;
  }
  // Where column n0's zero point starts in its qzeros word (n0 a multiple of 4).
  static __device__ __forceinline__ int zero_shift(int n0) { return n0 * BITS % 32; }
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
    r.zeros_next = zeros_straddle_ ? __ldg(zeros_ + 1) : 0u;  // never past the row where it is not needed
    return r;
  }
  __device__ __forceinline__ void advance() {
    if (group_ + 1 < groups_) ++group_, scales_ += scale_row_, zeros_ += zero_row_;
  }

 private:
  int group_, groups_;
  bool fp32_, zeros_straddle_;
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

// Pairs of BITS-bit values at positions STEP r (r < RUN) of both halves of a register, decoded in place: one mask
// puts pair r into the mantissas of two magic numbers (magic + q 2^position), and one HFMA2 with multiplier
// 2^-position and that position's offset pair -(magic 2^-position + zero) leaves q - zero exactly. A value at
// position s needs s + BITS mantissa bits, which bounds RUN.
template <typename T, int BITS, int STEP, int RUN>
struct PositionedPairs {
  using Magic = MagicPair<T>;
  static constexpr int kRun = RUN;
  static_assert(STEP * (RUN - 1) + BITS <= Magic::kMantissaBits, "a value must fit the magic mantissa");

  // Multipliers (2^-position in both halves), built once.
  static __device__ __forceinline__ void multipliers(uint32_t (&m)[RUN]) {
#pragma unroll
    for (int r = 0; r < RUN; ++r) {
      const float f = 1.f / static_cast<float>(1 << (STEP * r));
      m[r] = MmaOps<T>::pack2(f, f);
    }
  }
  // Offset pairs -(magic 2^-position + z), exact in T, for a zero point z given as h = magic + z in both halves
  // (z ORed into the mantissas): -h + (magic - magic 2^-position), one HFMA2 each.
  static __device__ __forceinline__ void offsets(uint32_t h, uint32_t (&o)[RUN]) {
    const uint32_t minus_one = MmaOps<T>::pack2(-1.f, -1.f);
#pragma unroll
    for (int r = 0; r < RUN; ++r) {
      const float c = Magic::kValue - Magic::kValue / static_cast<float>(1 << (STEP * r));
      o[r] = magic_fma<T>(h, minus_one, MmaOps<T>::pack2(c, c));
    }
  }
  // q - zero of the pair at position STEP R of `values` shifted down by SHIFT bits.
  template <int R, int SHIFT>
  static __device__ __forceinline__ uint32_t decode_at(uint32_t values, const uint32_t (&multiplier)[RUN],
                                                       const uint32_t (&offset)[RUN]) {
    constexpr uint32_t kMask = (core::value_mask(BITS) * 0x10001u) << (STEP * R);
    const uint32_t h = and_or(SHIFT == 0 ? values : values >> SHIFT, kMask, Magic::kBits);
    return magic_fma<T>(h, multiplier[R], offset[R]);
  }
};

// Pairs that fit in place before a shift: at most 4 (a lane's 4 pairs), and positions that fit the mantissa.
template <typename T>
constexpr int pairs_in_place(int bits, int step) {
  const int fit = (MagicPair<T>::kMantissaBits - bits) / step + 1;
  return fit < 4 ? fit : 4;
}

// The decode of FragmentOrderDecode (mma_ops.cuh) with an offset pair per position instead of per parity: lane
// t's values of one column and block sit in a register with pair p's low value at bit BITS p of the low half and
// its high value at the same bit of the high half. Runs of kRun pairs decode in place: pair p at position
// BITS (p % kRun) after a shift by BITS kRun (p / kRun) (none at all for 2-bit fp16).
template <typename T, int BITS>
struct InPlaceDecode : PositionedPairs<T, BITS, BITS, pairs_in_place<T>(BITS, BITS)> {
  using Base = PositionedPairs<T, BITS, BITS, pairs_in_place<T>(BITS, BITS)>;
  using Base::kRun;
  static constexpr int kValueRegs = 1;

  template <int P>
  static __device__ __forceinline__ uint32_t decode(const uint32_t (&values)[kValueRegs],
                                                    const uint32_t (&multiplier)[kRun], const uint32_t (&offset)[kRun]) {
    return Base::template decode_at<P % kRun, BITS * kRun * (P / kRun)>(values[0], multiplier, offset);
  }
};

// 3-bit weights in the checkpoint order (no fragment order exists for them): lane t takes rows 8t..8t+7 of each
// block, 24 consecutive bits of the block's 96 (one funnel shift of the two words they touch), and pairs them as
// (8t + 2p, 8t + 2p + 1) for p = 0..3, so its x fragment is 8 consecutive values (one 16-byte shared load). Values
// 2p and 2p + 1 sit at bits 6p and 6p + 3 of the lane's 24 bits; a byte permute of v and v << 13 puts pairs 0 and 1
// into the halves of one register (low values at 0 and 6, high values at 16 and 22), one of v >> 12 and v << 1
// pairs 2 and 3, and then each pair is one mask and one HFMA2 (position 6 needs 9 mantissa bits, which bf16 lacks:
// there odd pairs take one shift more).
template <typename T>
struct ThreeBitDecode : PositionedPairs<T, 3, 6, pairs_in_place<T>(3, 6) < 2 ? pairs_in_place<T>(3, 6) : 2> {
  using Base = PositionedPairs<T, 3, 6, pairs_in_place<T>(3, 6) < 2 ? pairs_in_place<T>(3, 6) : 2>;
  using Base::kRun;
  static constexpr int kValueRegs = 2;  // registers holding one column's 8 values after the permutes

  // The lane's 24 bits v (bits above 23 are ignored) as the two registers decode takes.
  static __device__ __forceinline__ void spread(uint32_t v, uint32_t (&out)[kValueRegs]) {
    out[0] = __byte_perm(v, v << 13, 0x7610u);
    out[1] = __byte_perm(v >> 12, v << 1, 0x7610u);
  }
  template <int P>
  static __device__ __forceinline__ uint32_t decode(const uint32_t (&values)[kValueRegs],
                                                    const uint32_t (&multiplier)[kRun], const uint32_t (&offset)[kRun]) {
    constexpr int kPair = P % 2;  // which of the register's two pairs
    return Base::template decode_at<kPair % kRun, 6 * (kPair / kRun)>(values[P / 2], multiplier, offset);
  }
};

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
  const int first_word = BITS == 4 ? ft : BITS == 2 ? ft / 2 : 3 * ft / 4;
  const int64_t second_word = BITS == 3 ? static_cast<int64_t>(min(first_word + 1, 2) - first_word) * p.n : 0;
  const int three_bit_shift = 24 * ft % 32;  // where the lane's 24 bits start in the first word
  const uint32_t* next_block =
      p.qweight + static_cast<int64_t>(kb_begin) * block_stride + static_cast<int64_t>(first_word) * p.n + n0;
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
  // Lane t's values of column c of a block as Decode takes them. 2 and 4 bits: pair p at bits BITS p and
  // 16 + BITS p (other bits are masked off); at 2 bits half t % 2 of the word, spread to bytes 0 and 2.
  const uint32_t half_selector = ft % 2 ? 0x4342u : 0x4140u;
  auto column_values = [&](const uint32_t (&w)[kRegsPerBlock], int c, uint32_t (&out)[Decode::kValueRegs]) {
    if constexpr (BITS == 3) {
      Decode::spread(__funnelshift_r(w[c], w[4 + c], static_cast<unsigned>(three_bit_shift)), out);
    } else if constexpr (BITS == 2) {
      out[0] = __byte_perm(w[c], 0u, half_selector);
    } else {
      out[0] = w[c];
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
    uint32_t h[4];  // magic + zero point of each column, in both halves
    if constexpr (BITS == 3) {
      const int shift = GroupStream<BITS>::zero_shift(n0);
      const uint32_t fields = __funnelshift_r(raw.zeros, raw.zeros_next, static_cast<unsigned>(shift));
#pragma unroll
      for (int c = 0; c < 4; ++c) h[c] = (((fields >> (3 * c)) + 1u) & 7u) * 0x10001u | MagicPair<T>::kBits;
    } else {
      // The lane's 4 zero points (stored minus one) at bits BITS c of both halves.
      const uint32_t zeros = (raw.zeros + core::ones_per_field(BITS)) >> GroupStream<BITS>::zero_shift(n0);
      const uint32_t both_halves = __byte_perm(zeros, 0u, BITS == 4 ? 0x1010u : 0x4040u);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        h[c] = and_or(both_halves >> (BITS * c), core::value_mask(BITS) * 0x10001u, MagicPair<T>::kBits);
      }
    }
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
    for (int c = 0; c < 4; ++c) column_values(w, c, values[c]);
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
