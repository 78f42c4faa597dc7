// What a lane of the two kernels that take the weights as the A operand of the tensor cores (the tensor-core
// GEMV, gemv_tc_kernel.cuh, and the Hopper kernel, gemm_wgmma_kernel.cuh) does with its share of the packed
// weights: lane (g, t) owns 4 consecutive columns, walks their scales and zero points group by group, and decodes
// its values of a 32-row block into A fragments of m16n8k16 (rows g and g + 8 of a 16-column tile), two values per
// mask and fused multiply-add.
#pragma once
#include <climits>
#include <cstdint>

#include "core/bitpack.h"
#include "cuda/common.cuh"
#include "cuda/mma_ops.cuh"

namespace gptq_kernels {
namespace cuda {

// Where lane t's words of a block lie, in rows of qweight from the block's first: the fragment-order word (4-bit:
// word t; 2-bit: word t / 2, half t % 2), or the first of two: 3-bit, the word holding stream bit 24t
// (ThreeBitDecode); 8-bit, word 2t (EightBitDecode).
template <int BITS>
__host__ __device__ constexpr int lane_first_word(int t) {
  return BITS == 4 ? t : BITS == 2 ? t / 2 : BITS == 3 ? 3 * t / 4 : 2 * t;
}
// Rows from the lane's first word to its second: 3-bit, the next word, except for lane 3, whose 24 bits end its
// first word (the block's last: it reads that word again rather than the next block's); 8-bit, the next word; none
// at 2 and 4 bits.
template <int BITS>
__host__ __device__ constexpr int lane_second_word_step(int t) {
  return BITS == 3 ? (lane_first_word<3>(t) + 1 < 2 ? lane_first_word<3>(t) + 1 : 2) - lane_first_word<3>(t)
                   : BITS == 8 ? 1 : 0;
}

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
    const int scale_bytes = fp32_ ? 4 : 2;
    scale_row_ = p.n * scale_bytes;
    zero_row_ = p.n * BITS / 32;
    scales_ = static_cast<const unsigned char*>(p.scales) +
              (static_cast<int64_t>(group) * p.n + n0) * static_cast<int64_t>(scale_bytes);
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
  int scale_row_, zero_row_;  // bytes and words from one group's row to the next
  const unsigned char* scales_;
  const uint32_t* zeros_;
};

// The groups of a lane's columns met block by block from a CTA's first block: the group of block b is
// b / blocks_per_group (clamped into [0, groups)), counted forward, and the next group's scales and zeros are always
// on their way (loaded a group ahead), so that a group change converts registers instead of waiting for memory.
template <int BITS>
class GroupWalk {
 public:
  __device__ __forceinline__ GroupWalk(const FusedGemmParams& p, int first_block, int n0)
      : blocks_per_group_(p.group_size == -1 ? INT_MAX : p.group_size / core::kBlockValues),
        next_block_(p.group_size == -1 ? INT_MAX : (first_block / blocks_per_group_ + 1) * blocks_per_group_),
        stream_(p, p.group_size == -1 ? 0 : min(first_block / blocks_per_group_, p.groups - 1), n0) {
    first_ = stream_.load();
    stream_.advance();
    next_ = stream_.load();
  }
  // The group of the first block.
  __device__ __forceinline__ const RawGroup& first() const { return first_; }
  // Whether a group starts at block b (blocks are visited in increasing order).
  __device__ __forceinline__ bool starts_at(int b) const { return b == next_block_; }
  // The group that starts now, until advance().
  __device__ __forceinline__ const RawGroup& next() const { return next_; }
  // Past the group that started: loads the one after it into the same registers, so that a group change that
  // converts next() first and then advances copies no registers.
  __device__ __forceinline__ void advance() {
    next_block_ += blocks_per_group_;
    stream_.advance();
    next_ = stream_.load();
  }

 private:
  int blocks_per_group_, next_block_;
  GroupStream<BITS> stream_;
  RawGroup first_, next_;
};

__device__ __forceinline__ float raw_scale(const uint4& s, int c, FloatType type) {
  const uint32_t w[4] = {s.x, s.y, s.z, s.w};
  if (type == FloatType::kFloat) return __uint_as_float(w[c]);
  const uint32_t bits16 = (w[c / 2] >> (16 * (c % 2))) & 0xffffu;
  if (type == FloatType::kBFloat16) return __uint_as_float(bits16 << 16);
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits16)));
}

// The negated magic-number form of a lane's 4 zero points (columns n0..n0+3 of the group): h[c] = -(magic + zero)
// of column c in both halves, as the decoders' offsets() take it: the zero point ORed into the mantissas of a
// negative magic number, so that position 0's offset pair costs nothing (8-bit bf16, where no magic number holds 8
// bits: the zero point alone, for EightBitDecode). qzeros stores zero points minus one.
template <typename T, int BITS>
__device__ __forceinline__ void lane_zero_points(const RawGroup& raw, int n0, uint32_t (&h)[4]) {
  constexpr uint32_t kNegativeMagic = MagicPair<T>::kBits | kSignBits;
  if constexpr (BITS == 3) {
    const int shift = GroupStream<BITS>::zero_shift(n0);
    const uint32_t fields = __funnelshift_r(raw.zeros, raw.zeros_next, static_cast<unsigned>(shift));
#pragma unroll
    for (int c = 0; c < 4; ++c) h[c] = (((fields >> (3 * c)) + 1u) & 7u) * 0x10001u | kNegativeMagic;
  } else if constexpr (BITS == 8) {
    const uint32_t zeros = raw.zeros + core::ones_per_field(BITS);  // the word of columns n0..n0+3
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      h[c] = (zeros >> (8 * c) & 0xffu) * 0x10001u | (MagicPair<T>::kHalf ? kNegativeMagic : 0u);
    }
  } else {
    // The lane's 4 zero points at bits BITS c of both halves.
    const uint32_t zeros = (raw.zeros + core::ones_per_field(BITS)) >> GroupStream<BITS>::zero_shift(n0);
    const uint32_t both_halves = __byte_perm(zeros, 0u, BITS == 4 ? 0x1010u : 0x4040u);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      h[c] = and_or(both_halves >> (BITS * c), core::value_mask(BITS) * 0x10001u, kNegativeMagic);
    }
  }
}

// Pairs of BITS-bit values at positions STEP r (r < RUN) of both halves of a register, decoded in place: one mask
// puts pair r into the mantissas of two magic numbers (magic + q 2^position), and one HFMA2 with multiplier
// 2^-position and that position's offset pair -(magic 2^-position + zero) leaves q - zero exactly. A value at
// position s needs s + BITS mantissa bits, which bounds RUN.
template <typename T, int BITS, int STEP, int RUN>
struct PositionedPairs {
  using Magic = MagicPair<T>;
  static constexpr int kRun = RUN;
  static constexpr bool kScalesItself = false;  // the caller multiplies decode's q - zero by the scale
  static_assert(STEP * (RUN - 1) + BITS <= Magic::kMantissaBits, "a value must fit the magic mantissa");

  // Multipliers (2^-position in both halves), built once.
  static __device__ __forceinline__ void multipliers(uint32_t (&m)[RUN]) {
#pragma unroll
    for (int r = 0; r < RUN; ++r) {
      const float f = 1.f / static_cast<float>(1 << (STEP * r));
      m[r] = MmaOps<T>::pack2(f, f);
    }
  }
  // Offset pairs -(magic 2^-position + z), exact in T, for a zero point z given as h = -(magic + z) in both halves
  // (lane_zero_points): h itself at position 0, h + (magic - magic 2^-position) after it, one HFMA2 each.
  static __device__ __forceinline__ void offsets(uint32_t h, uint32_t (&o)[RUN]) {
    const uint32_t one = MmaOps<T>::pack2(1.f, 1.f);
    o[0] = h;
#pragma unroll
    for (int r = 1; r < RUN; ++r) {
      const float c = Magic::kValue - Magic::kValue / static_cast<float>(1 << (STEP * r));
      o[r] = magic_fma<T>(h, one, MmaOps<T>::pack2(c, c));
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

  // The lane's values of one column from its word of the block (the second word is not used): 2-bit, half t % 2
  // of the word, spread to bytes 0 and 2.
  static __device__ __forceinline__ void lane_values(uint32_t word, uint32_t, int lane_t,
                                                     uint32_t (&out)[kValueRegs]) {
    out[0] = BITS == 2 ? __byte_perm(word, 0u, lane_t % 2 ? 0x4342u : 0x4140u) : word;
  }

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

  // The lane's values of one column, as the two registers decode takes, from the two words holding its 24 bits
  // (from bit 24t % 32 of the first).
  static __device__ __forceinline__ void lane_values(uint32_t first, uint32_t second, int lane_t,
                                                     uint32_t (&out)[kValueRegs]) {
    const uint32_t v = __funnelshift_r(first, second, static_cast<unsigned>(24 * lane_t % 32));  // bits 24+ ignored
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

// 8-bit weights in the checkpoint order: lane t takes rows 8t..8t+7 of a block, words 2t and 2t + 1 (4 values
// each), and pairs them as (8t + 2p, 8t + 2p + 1) like ThreeBitDecode, so the same x fragment goes with them. fp16:
// one byte permute puts a pair into the mantissas of two magic numbers 1024 + q (8 bits fit fp16's 10), and one
// HFMA2 leaves q - zero exactly. bf16 keeps only 7 mantissa bits: there each value goes through fp32 (a byte
// permute into 2^23 + q, then q - zero and the scale in fp32, one rounding to bf16), and decode_scaled applies the
// scale itself.
template <typename T>
struct EightBitDecode {
  static constexpr bool kHalf = MagicPair<T>::kHalf;
  static constexpr int kRun = 1;
  static constexpr int kValueRegs = 2;  // words 2t and 2t + 1
  static constexpr bool kScalesItself = !kHalf;

  static __device__ __forceinline__ void multipliers(uint32_t (&m)[kRun]) { m[0] = MmaOps<T>::pack2(1.f, 1.f); }
  // The lane's values of one column: its words 2t and 2t + 1 of the block, as they are.
  static __device__ __forceinline__ void lane_values(uint32_t first, uint32_t second, int,
                                                     uint32_t (&out)[kValueRegs]) {
    out[0] = first, out[1] = second;
  }
  // From lane_zero_points' h: fp16, h = -(1024 + z) in both halves, as it is; bf16, the float 2^23 + z.
  static __device__ __forceinline__ void offsets(uint32_t h, uint32_t (&o)[kRun]) {
    if constexpr (kHalf) {
      o[0] = h;
    } else {
      o[0] = __float_as_uint(kMagicFloat + static_cast<float>(h & 0xffu));
    }
  }
  // fp16: q - zero of pair P (bytes 2 (P % 2) and 2 (P % 2) + 1 of word P / 2).
  template <int P>
  static __device__ __forceinline__ uint32_t decode(const uint32_t (&values)[kValueRegs],
                                                    const uint32_t (&multiplier)[kRun], const uint32_t (&offset)[kRun]) {
    const uint32_t h = __byte_perm(values[P / 2], 0x64u, P % 2 ? 0x4342u : 0x4140u);
    return magic_fma<T>(h, multiplier[0], offset[0]);
  }
  // bf16: (q - zero) scale of pair P, for the scale pair as the caller holds it (bf16 in both halves).
  template <int P>
  static __device__ __forceinline__ uint32_t decode_scaled(const uint32_t (&values)[kValueRegs],
                                                           const uint32_t (&offset)[kRun], uint32_t scale2) {
    constexpr uint32_t kLow = 0x7440u | (P % 2) * 2;  // byte b of the word under the exponent of 2^23
    const float zero = __uint_as_float(offset[0]), scale = __uint_as_float(scale2 << 16);
    const float lo = __uint_as_float(__byte_perm(values[P / 2], kMagicBits, kLow)) - zero;
    const float hi = __uint_as_float(__byte_perm(values[P / 2], kMagicBits, kLow + 1)) - zero;
    return MmaOps<T>::pack2(lo * scale, hi * scale);
  }
};

}  // namespace cuda
}  // namespace gptq_kernels
