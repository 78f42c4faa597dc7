// How the bf16 variant of the fused CPU kernel (gemv_avx512bf16.cpp) turns packed weights into operands of
// vdpbf16ps, which adds lo(a) * lo(b) + hi(a) * hi(b) of two bf16 pairs to each fp32 lane: 32 multiply-adds per
// instruction, twice as many as an fp32 FMA.
//
// The bf16 with bits 0x4300 | m is exactly 128 + m for every m < 128 (the exponent of 128, m in the 7 mantissa
// bits). So when two b-bit values q_a, q_b of one column lie 16 bits apart, a shift of their word and one AND-OR
// (vpternlogd) give the lane (128 + q_a * 2^t_a, 128 + q_b * 2^t_b), with no int -> float conversion; t_a and t_b
// say where each value's lowest bit lands in its mantissa, which lets most pairs skip the shift. The activations are
// paired to match, x'_a = x_a * 2^-t_a in the low half and x'_b = x_b * 2^-t_b in the high half, so each lane adds
//     x_a * q_a + x_b * q_b + 128 * (x'_a + x'_b),
// and the kernel subtracts 128 * sum(x') once per segment, next to the zero-point term. bf16 activations times
// these small integers are exact products, summed in fp32.
//
// Eight-bit values do not fit a 7-bit mantissa: 8-bit weights take the fp32 kernel.
#pragma once
#include <cstdint>
#include <version>
#if defined(__cpp_lib_bit_cast)
#include <bit>
#endif

#include "core/bitpack.h"

namespace gptq_kernels {
namespace cpu {

constexpr uint32_t kBf16PairBase = 0x43004300u;  // 128.0 in both bf16 halves of a lane
constexpr float kBf16PairBias = 128.0f;
constexpr int kPairsPerBlock = core::kBlockValues / 2;

constexpr bool has_bf16_pairs(int bits) { return bits == 2 || bits == 3 || bits == 4; }

// Lane p of a 32-value block: which two values it holds and how they are cut out of the block's words.
struct Bf16Pair {
  int low, high;                // values of the block (0..31) in the low and high bf16
  int low_offset, high_offset;  // mantissa bit of each value's lowest bit: x is pre-scaled by 2^-offset
  int word;                     // block word the lane is cut from
  int shift;                    // right shift of that word (negative: left shift)
  bool funnel;                  // the lane also takes the low bits of word + 1 (a value straddles the two)
  uint32_t mask;                // the two values' bits after the shift
};

// Which values share a lane. At 2 and 4 bits, values 16 bits apart in one word (j with j+8, j with j+4). At 3 bits
// no two values are 16 bits apart, so lanes pair values 15 or 18 bits apart, each word's values among themselves,
// and the two values that straddle words (10 and 21) with a value of the next word.
constexpr int kThreeBitPairs[kPairsPerBlock][2] = {{0, 5},   {1, 6},   {2, 7},   {3, 8},   {4, 9},   {10, 15},
                                                   {11, 17}, {12, 18}, {13, 19}, {14, 20}, {16, 21}, {22, 27},
                                                   {23, 28}, {24, 29}, {25, 30}, {26, 31}};

constexpr int pair_low_value(int bits, int p) {
  return bits == 3 ? kThreeBitPairs[p][0] : bits == 2 ? 16 * (p / 8) + p % 8 : 8 * (p / 4) + p % 4;
}
constexpr int pair_high_value(int bits, int p) {
  return bits == 3 ? kThreeBitPairs[p][1] : pair_low_value(bits, p) + (bits == 2 ? 8 : 4);
}

// Offsets that keep both values of lane p inside their 7 mantissa bits; high_offset = low_offset + distance - 16.
constexpr int pair_distance(int bits, int p) { return (pair_high_value(bits, p) - pair_low_value(bits, p)) * bits; }
constexpr int pair_min_offset(int bits, int p) { return pair_distance(bits, p) < 16 ? 16 - pair_distance(bits, p) : 0; }
constexpr int pair_max_offset(int bits, int p) {
  return 7 - bits - (pair_distance(bits, p) > 16 ? pair_distance(bits, p) - 16 : 0);
}
constexpr bool pair_straddles(int bits, int p) {  // the lane needs bits of two words
  return core::word_of(pair_low_value(bits, p), bits) != (pair_high_value(bits, p) * bits + bits - 1) / 32;
}

// The shift of lane p's word. Lanes of one word reuse the previous lane's shifted word when their values fit the
// mantissas there (the unshifted word first), so several lanes cost one shift; otherwise the new shift puts the low
// value at its lowest offset, which leaves the most room for the lanes after it.
constexpr int pair_shift(int bits, int p) {
  int shift = 0;
  for (int q = 0; q <= p; ++q) {
    const int word = core::word_of(pair_low_value(bits, q), bits);
    if (q > 0 && word != core::word_of(pair_low_value(bits, q - 1), bits)) shift = 0;
    const int in_word = core::shift_of(pair_low_value(bits, q), bits);
    const bool fits = in_word - shift >= pair_min_offset(bits, q) && in_word - shift <= pair_max_offset(bits, q);
    if (pair_straddles(bits, q)) {
      if (q == p) return in_word - pair_min_offset(bits, q);  // its own funnel shift, not reused
    } else if (!fits) {
      shift = in_word - pair_min_offset(bits, q);
    }
  }
  return shift;
}

constexpr Bf16Pair bf16_pair(int bits, int p) {
  Bf16Pair pair{};
  pair.low = pair_low_value(bits, p);
  pair.high = pair_high_value(bits, p);
  pair.word = core::word_of(pair.low, bits);
  pair.shift = pair_shift(bits, p);
  pair.funnel = pair_straddles(bits, p);
  pair.low_offset = core::shift_of(pair.low, bits) - pair.shift;
  pair.high_offset = pair.low_offset + pair_distance(bits, p) - 16;
  pair.mask = (core::value_mask(bits) << pair.low_offset) | (core::value_mask(bits) << (16 + pair.high_offset));
  return pair;
}

// --- Compile-time checks: every lane of the plan decodes to the right pair, each value is in exactly one lane.

namespace bf16_pairs_check {

constexpr uint32_t pattern(int j, int bits) { return (static_cast<uint32_t>(j) * 2654435761u >> 9) & core::value_mask(bits); }

template <int BITS>
constexpr bool plan_decodes_every_value() {
  uint32_t w[BITS] = {};  // the block, written one stream bit at a time
  for (int t = 0; t < core::kBlockValues * BITS; ++t) w[t / 32] |= ((pattern(t / BITS, BITS) >> t % BITS) & 1u) << t % 32;
  int seen[core::kBlockValues] = {};
  for (int p = 0; p < kPairsPerBlock; ++p) {
    const Bf16Pair pair = bf16_pair(BITS, p);
    if (pair.low_offset < 0 || pair.high_offset < 0 || pair.low_offset + BITS > 7 || pair.high_offset + BITS > 7) {
      return false;
    }
    ++seen[pair.low];
    ++seen[pair.high];
    // What the kernel computes: the (funnel-)shifted word, masked, with 128.0 ORed into both halves.
    const uint64_t window = w[pair.word] | (pair.funnel ? uint64_t{w[pair.word + 1]} << 32 : 0);
    const uint32_t cut = pair.shift >= 0 ? static_cast<uint32_t>(window >> pair.shift)
                                         : static_cast<uint32_t>(window << -pair.shift);
    const uint32_t lane = (cut & pair.mask) | kBf16PairBase;
    if ((lane & 0xFFFFu) != (0x4300u | pattern(pair.low, BITS) << pair.low_offset)) return false;
    if ((lane >> 16) != (0x4300u | pattern(pair.high, BITS) << pair.high_offset)) return false;
  }
  for (int j = 0; j < core::kBlockValues; ++j) {
    if (seen[j] != 1) return false;
  }
  return true;
}

static_assert(plan_decodes_every_value<2>(), "2-bit bf16 pairs");
static_assert(plan_decodes_every_value<3>(), "3-bit bf16 pairs");
static_assert(plan_decodes_every_value<4>(), "4-bit bf16 pairs");

#if defined(__cpp_lib_bit_cast)
constexpr bool bf16_base_is_exact() {
  for (uint32_t m = 0; m < 128; ++m) {
    if (std::bit_cast<float>((0x4300u | m) << 16) != kBf16PairBias + static_cast<float>(m)) return false;
  }
  return std::bit_cast<float>(kBf16PairBase << 16) == kBf16PairBias;
}
static_assert(bf16_base_is_exact(), "bf16 0x4300 | m is 128 + m");
#endif

}  // namespace bf16_pairs_check

}  // namespace cpu
}  // namespace gptq_kernels
