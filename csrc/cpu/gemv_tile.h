// The small-batch kernel body, written once against a vector "traits" type (Vec) and compiled once per
// instruction set (gemv_generic.cpp, gemv_avx2.cpp, gemv_avx512.cpp, gemv_avx512bf16.cpp). Include it only after the
// including file has set its target options: everything here has internal linkage so the copies built
// for different instruction sets never meet at link time.
//
// Vec provides
//  * kLanes; kMaxRows (rows that share one decode of the weights: as many as keep all accumulators in registers);
//    kWordBarrier (keep the compiler from hoisting the next word's loads, where registers are few); kBf16Pairs;
//  * F (float vector), I (uint32 vector): load_u32, load_u32_first(p, count) (the first count words, the rest 0,
//    reading nothing past them), srl<S>, sll<S>, and_mask, or_, add_u32, permute(words, index) (lane i =
//    words[index[i]]), srlv / sllv (per-lane shifts; 32 or more give 0), to_float, fma(a, b, c) = a*b + c, add,
//    mul, load_half / load_bf16 (kLanes 16-bit floats -> F), set1, load, store, zero;
//  * where kBf16Pairs is set: bf16_pair_lanes(word, mask) = (word & mask) | kBf16PairBase, and
//    dot_pairs(acc, lanes, x_pair) (vdpbf16ps with x_pair broadcast).
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/bitpack.h"
#include "cpu/bf16_pairs.h"
#include "cpu/gemv.h"

namespace gptq_kernels {
namespace cpu {
namespace {

// The decode of one block is 32 small template functions: they must inline into one loop body, or the
// accumulators would live in memory instead of registers.
#define GPTQ_ALWAYS_INLINE inline __attribute__((always_inline))


// Where value J of a 32-value block sits, known at compile time so every shift and mask is an immediate.
template <int BITS, int J>
struct ValueSlot {
  static constexpr int word = core::word_of(J, BITS);
  static constexpr int shift = core::shift_of(J, BITS);
  static constexpr bool straddles = core::straddles(J, BITS);
  // Values that neither straddle nor touch bit 31 are masked where they lie, q * 2^shift, and converted
  // without a shift: the activation was pre-scaled by 2^-shift (see x_scale_exponent in gemv.h), and the product
  // x * 2^-shift * q * 2^shift is exactly x * q. That saves one instruction per weight.
  static constexpr bool in_place = !straddles && shift + BITS < 32;
};

// Tiles ahead of the current one whose packed words are prefetched (128 bytes of each row per tile): 8 measured
// faster than 2 and 4, and no slower than 16.
constexpr int64_t kPrefetchTiles = 8;
// The same for the block-major order (gemv_tiles_block_major), whose visits to a tile are one block each: 16
// measured faster than 8, 32 and 64.
constexpr int64_t kBlockMajorPrefetchTiles = 16;
// Up to this many rows of x the kernel runs block-major (see gemv_tiles_block_major).
constexpr int kBlockMajorMaxRows = 4;

template <class Vec>
constexpr int kTileVectors = kTileColumns / Vec::kLanes;

// Accumulator sets per row: with few rows, the only independent chains of multiply-adds are the rows' vectors of
// the tile (2 with AVX-512 and one row), fewer than latency x throughput (4 cycles x 2 per cycle for an FMA), so
// consecutive values (or lanes) of a block add into separate sets that are summed at the end.
constexpr int kIndependentSums = 8;
template <class Vec, int ROWS>
constexpr int kAccumulatorSets =
    ROWS * kTileVectors<Vec> >= kIndependentSums ? 1 : kIndependentSums / (ROWS * kTileVectors<Vec>);

template <class Vec, int ROWS>
using Accumulators = typename Vec::F[kAccumulatorSets<Vec, ROWS> * ROWS][kTileVectors<Vec>];

// Decodes value J of the block for every column of the tile and adds x[r, J] * q to each row's sums.
// x points at the block's first position in the row band: position J of row r is x[J * ROWS + r].
template <class Vec, int BITS, int ROWS, int J>
GPTQ_ALWAYS_INLINE void accumulate_value(const uint32_t* block, int64_t n, const float* x, Accumulators<Vec, ROWS>& acc) {
  constexpr int kSet = (J % kAccumulatorSets<Vec, ROWS>) * ROWS;
  using Slot = ValueSlot<BITS, J>;
  constexpr int kVectors = kTileVectors<Vec>;
  if constexpr (Vec::kWordBarrier && BITS != 3 && J > 0 && Slot::word != core::word_of(J - 1, BITS)) {
    // Entering a new word: stop the compiler from hoisting the loads of later words, whose registers
    // would push the accumulators out to the stack. (Not for 3 bits: its straddling values already read
    // the next word, and the barrier would force that load again; measured slower.)
    asm volatile("" ::: "memory");
  }
  typename Vec::F xv[ROWS];
  for (int r = 0; r < ROWS; ++r) xv[r] = Vec::set1(x[J * ROWS + r]);
  for (int v = 0; v < kVectors; ++v) {
    const auto word = Vec::load_u32(block + Slot::word * n + v * Vec::kLanes);
    typename Vec::I q;
    if constexpr (Slot::in_place) {
      q = Vec::and_mask(word, core::value_mask(BITS) << Slot::shift);
    } else if constexpr (Slot::straddles) {
      q = Vec::or_(Vec::template srl<Slot::shift>(word),
                   Vec::template sll<32 - Slot::shift>(Vec::load_u32(block + (Slot::word + 1) * n + v * Vec::kLanes)));
      q = Vec::and_mask(q, core::value_mask(BITS));
    } else {  // the top value of a word: the shift clears everything above it
      q = Vec::template srl<Slot::shift>(word);
    }
    const auto qf = Vec::to_float(q);
    for (int r = 0; r < ROWS; ++r) acc[kSet + r][v] = Vec::fma(xv[r], qf, acc[kSet + r][v]);
  }
}

// The bf16 kernel's counterpart: lane P of the block (two values, see cpu/bf16_pairs.h) for every column of the
// tile, one vdpbf16ps per row and vector. x points at the block's first lane in the row band of x_pairs.
template <class Vec, int BITS, int ROWS, int P>
GPTQ_ALWAYS_INLINE void accumulate_pair(const uint32_t* block, int64_t n, const uint32_t* x, Accumulators<Vec, ROWS>& acc) {
  constexpr int kSet = (P % kAccumulatorSets<Vec, ROWS>) * ROWS;
  constexpr Bf16Pair kPair = bf16_pair(BITS, P);
  constexpr int kVectors = kTileVectors<Vec>;
  for (int v = 0; v < kVectors; ++v) {
    auto word = Vec::load_u32(block + kPair.word * n + v * Vec::kLanes);
    if constexpr (kPair.funnel) {
      word = Vec::or_(Vec::template srl<kPair.shift>(word),
                      Vec::template sll<32 - kPair.shift>(Vec::load_u32(block + (kPair.word + 1) * n + v * Vec::kLanes)));
    } else if constexpr (kPair.shift > 0) {
      word = Vec::template srl<kPair.shift>(word);
    } else if constexpr (kPair.shift < 0) {
      word = Vec::template sll<-kPair.shift>(word);
    }
    const auto lanes = Vec::bf16_pair_lanes(word, kPair.mask);
    for (int r = 0; r < ROWS; ++r) acc[kSet + r][v] = Vec::dot_pairs(acc[kSet + r][v], lanes, x[P * ROWS + r]);
  }
}

template <class Vec, int BITS, int ROWS, size_t... J>
GPTQ_ALWAYS_INLINE void accumulate_block(const uint32_t* block, int64_t n, const float* x, Accumulators<Vec, ROWS>& acc,
                                         std::index_sequence<J...>) {
  (accumulate_value<Vec, BITS, ROWS, static_cast<int>(J)>(block, n, x, acc), ...);
}

template <class Vec, int BITS, int ROWS, size_t... P>
GPTQ_ALWAYS_INLINE void accumulate_block_pairs(const uint32_t* block, int64_t n, const uint32_t* x,
                                               Accumulators<Vec, ROWS>& acc, std::index_sequence<P...>) {
  (accumulate_pair<Vec, BITS, ROWS, static_cast<int>(P)>(block, n, x, acc), ...);
}

// Where zero point c of a tile lies in the tile's BITS words of a qzeros row (packed along N in the same bit stream
// as a block of qweight along K), so that all 32 are decoded with a few permutes and variable shifts.
template <int BITS>
struct ZeroSlots {
  static constexpr bool kStraddles = BITS == 3;
  uint32_t word[kTileColumns] = {}, shift[kTileColumns] = {};
  uint32_t next_word[kTileColumns] = {}, next_shift[kTileColumns] = {};  // the bits a straddling value takes from word + 1
  constexpr ZeroSlots() {
    for (int c = 0; c < kTileColumns; ++c) {
      word[c] = core::word_of(c, BITS);
      shift[c] = core::shift_of(c, BITS);
      next_word[c] = core::straddles(c, BITS) ? word[c] + 1 : word[c];
      next_shift[c] = core::straddles(c, BITS) ? 32 - shift[c] : 32;  // a left shift by 32 clears the lane
    }
  }
};

// scale[c] and scale[c] * zero[c] of group g for the tile's 32 columns. Runs once per segment and tile, so it is
// vectorised: done per column in scalar code, the zero points alone took a fifth of the time at batch 1.
template <class Vec, int BITS>
inline void load_group(const GemvProblem& p, int64_t g, int64_t n0, float* scale, float* scaled_zero) {
  static_assert(Vec::kLanes >= BITS, "the tile's zero words must fit one vector");
  static constexpr ZeroSlots<BITS> kSlots{};
  const uint32_t* zero_block = p.qzeros + g * (p.n * BITS / 32) + (n0 / 32) * BITS;
  // Stored zero points are zero - 1 (core::zero_point): at 2, 4 and 8 bits whole words borrow, so the ones are added
  // back word by word; at 3 bits each value wraps modulo 8 instead.
  const auto word_vector = Vec::add_u32(Vec::load_u32_first(zero_block, BITS), core::ones_per_field(BITS));
  const int64_t offset = g * p.n + n0;
  for (int c = 0; c < kTileColumns; c += Vec::kLanes) {
    auto q = Vec::srlv(Vec::permute(word_vector, Vec::load_u32(kSlots.word + c)), Vec::load_u32(kSlots.shift + c));
    if constexpr (ZeroSlots<BITS>::kStraddles) {
      q = Vec::or_(q, Vec::sllv(Vec::permute(word_vector, Vec::load_u32(kSlots.next_word + c)),
                                Vec::load_u32(kSlots.next_shift + c)));
      q = Vec::add_u32(Vec::and_mask(q, core::value_mask(BITS)), 1);
    }
    const auto zero = Vec::to_float(Vec::and_mask(q, core::value_mask(BITS)));
    typename Vec::F s;
    switch (p.scale_type) {
      case ScaleType::kHalf: s = Vec::load_half(static_cast<const uint16_t*>(p.scales) + offset + c); break;
      case ScaleType::kBFloat16: s = Vec::load_bf16(static_cast<const uint16_t*>(p.scales) + offset + c); break;
      default: s = Vec::load(static_cast<const float*>(p.scales) + offset + c);
    }
    Vec::store(scale + c, s);
    Vec::store(scaled_zero + c, Vec::mul(s, zero));
  }
}

// Adds block b of the tile at column n0 times rows [m0, m0 + ROWS) of x to acc.
template <class Vec, int BITS, int ROWS>
GPTQ_ALWAYS_INLINE void accumulate_tile_block(const GemvProblem& p, int64_t b, int64_t n0, int64_t m0,
                                              Accumulators<Vec, ROWS>& acc) {
  const uint32_t* block = p.qweight + b * BITS * p.n + n0;
  if constexpr (Vec::kBf16Pairs) {
    accumulate_block_pairs<Vec, BITS, ROWS>(block, p.n, p.x_pairs + m0 * (p.k / 2) + b * kPairsPerBlock * ROWS, acc,
                                            std::make_index_sequence<kPairsPerBlock>{});
  } else {
    accumulate_block<Vec, BITS, ROWS>(block, p.n, p.x + m0 * p.k + b * core::kBlockValues * ROWS, acc,
                                      std::make_index_sequence<core::kBlockValues>{});
  }
}

template <class Vec, int ROWS>
GPTQ_ALWAYS_INLINE void zero_accumulators(Accumulators<Vec, ROWS>& acc) {
  for (auto& row : acc)
    for (auto& v : row) v = Vec::zero();
}

// Sums the accumulator sets into the first.
template <class Vec, int ROWS>
GPTQ_ALWAYS_INLINE void fold_accumulator_sets(Accumulators<Vec, ROWS>& acc) {
  for (int set = 1; set < kAccumulatorSets<Vec, ROWS>; ++set)
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < kTileVectors<Vec>; ++v) acc[r][v] = Vec::add(acc[r][v], acc[set * ROWS + r][v]);
}

// Applies the group's scale and zero point to the segment's folded sums and adds them to y (the first segment
// writes y).
template <class Vec, int ROWS>
GPTQ_ALWAYS_INLINE void finish_segment_tile(const GemvProblem& p, int64_t segment, int64_t n0, int64_t m0,
                                            const Accumulators<Vec, ROWS>& acc, const float* scale,
                                            const float* scaled_zero) {
  for (int r = 0; r < ROWS; ++r) {
    const int64_t row_segment = (m0 + r) * p.num_segments + segment;
    const auto x_sum = Vec::set1(-p.x_segment_sums[row_segment]);
    float* y = p.y + (m0 + r) * p.n + n0;
    for (int v = 0; v < kTileVectors<Vec>; ++v) {
      const int c = v * Vec::kLanes;
      auto sum = acc[r][v];
      // The bf16 lanes carry 128 + q: take 128 * sum(x') out before scaling, while the difference is exact.
      if constexpr (Vec::kBf16Pairs) sum = Vec::add(sum, Vec::set1(-p.x_pair_bias[row_segment]));
      // y += scale * acc - scale * zero * sum(x)
      auto out = Vec::fma(Vec::load(scale + c), sum, segment == 0 ? Vec::zero() : Vec::load(y + c));
      Vec::store(y + c, Vec::fma(Vec::load(scaled_zero + c), x_sum, out));
    }
  }
}

// One segment x one tile x ROWS rows starting at row m0 (a whole row band, or the last, shorter one). Inlined into
// gemv_tiles like everything below it: compiled out of line, it spilled accumulators to the stack (AVX2, 4 bits)
// and ran up to 15% slower at batch 16.
template <class Vec, int BITS, int ROWS>
GPTQ_ALWAYS_INLINE void segment_tile(const GemvProblem& p, int64_t segment, int64_t n0, int64_t m0, const float* scale,
                  const float* scaled_zero) {
  Accumulators<Vec, ROWS> acc;
  zero_accumulators<Vec, ROWS>(acc);
  for (int64_t b = p.segment_begin[segment]; b < p.segment_begin[segment + 1]; ++b) {
    accumulate_tile_block<Vec, BITS, ROWS>(p, b, n0, m0, acc);
  }
  fold_accumulator_sets<Vec, ROWS>(acc);
  finish_segment_tile<Vec, ROWS>(p, segment, n0, m0, acc, scale, scaled_zero);
}

// segment_tile for min(rows, ROWS) rows, the row count chosen at compile time.
template <class Vec, int BITS, int ROWS = Vec::kMaxRows>
GPTQ_ALWAYS_INLINE void segment_tile_rows(const GemvProblem& p, int64_t rows, int64_t segment, int64_t n0, int64_t m0,
                       const float* scale, const float* scaled_zero) {
  if constexpr (ROWS > 1) {
    if (rows < ROWS) return segment_tile_rows<Vec, BITS, ROWS - 1>(p, rows, segment, n0, m0, scale, scaled_zero);
  }
  segment_tile<Vec, BITS, ROWS>(p, segment, n0, m0, scale, scaled_zero);
}

// A prefetch the compiler keeps: a loop that does nothing but __builtin_prefetch counts as free of side effects,
// and GCC deletes it in some shapes; the empty volatile asm is a side effect.
GPTQ_ALWAYS_INLINE void prefetch_line(const void* address) {
  __builtin_prefetch(address);
  asm volatile("" : : "r"(address));
}

// Segment-major order, for more rows than kBlockMajorMaxRows, where the arithmetic dominates: each thread sweeps
// its column range once per segment, keeps the sums of a (segment, tile) piece in registers over all its blocks,
// and the piece stays in L1 while the row bands take turns on it.
template <class Vec, int BITS>
void gemv_tiles(const GemvProblem& p, int64_t tile_begin, int64_t tile_end) {
  alignas(64) float scale[kTileColumns];
  alignas(64) float scaled_zero[kTileColumns];
  const int64_t scale_bytes = p.scale_type == ScaleType::kFloat ? 4 : 2;
  for (int64_t s = 0; s < p.num_segments; ++s) {
    const int64_t segment_rows = (p.segment_begin[s + 1] - p.segment_begin[s]) * BITS;
    const uint32_t* segment_words = p.qweight + p.segment_begin[s] * BITS * p.n;
    const int64_t g = p.segment_group[s];
    for (int64_t t = tile_begin; t < tile_end; ++t) {
      const int64_t n0 = t * kTileColumns;
      if (t + kPrefetchTiles < tile_end) {
        // Each packed row of the segment is its own stream through memory; with a dozen or more of them the
        // hardware prefetchers fall behind, so ask for the tile kPrefetchTiles ahead explicitly. The same for the
        // group's scales and zero points, which would otherwise stall load_group at every tile.
        const int64_t n_ahead = n0 + kPrefetchTiles * kTileColumns;
        const uint32_t* ahead = segment_words + n_ahead;
        for (int64_t r = 0; r < segment_rows; ++r) {
          prefetch_line(ahead + r * p.n);
          prefetch_line(ahead + r * p.n + 16);
        }
        const char* scales_ahead = static_cast<const char*>(p.scales) + (g * p.n + n_ahead) * scale_bytes;
        prefetch_line(scales_ahead);
        if (scale_bytes == 4) prefetch_line(scales_ahead + 64);
        prefetch_line(p.qzeros + g * (p.n * BITS / 32) + n_ahead / 32 * BITS);
      }
      load_group<Vec, BITS>(p, g, n0, scale, scaled_zero);
      for (int64_t m0 = 0; m0 < p.m; m0 += Vec::kMaxRows) {
        segment_tile_rows<Vec, BITS>(p, p.m - m0, s, n0, m0, scale, scaled_zero);
      }
    }
  }
}

// Block-major order, for rows few enough that the kernel waits on memory rather than arithmetic: each thread sweeps
// its columns once per 32-row block, so it reads `bits` neighbouring rows of qweight at a time instead of a whole
// segment's (16 for 4 bits with groups of 128), which DRAM serves faster. The sums of the segment so far wait in
// a per-thread buffer between sweeps; the last block of the segment finishes them into y.
template <class Vec, int BITS, int ROWS>
void gemv_tiles_block_major(const GemvProblem& p, int64_t tile_begin, int64_t tile_end) {
  constexpr int kVectors = kTileVectors<Vec>;
  alignas(64) float scale[kTileColumns];
  alignas(64) float scaled_zero[kTileColumns];
  std::vector<float> pending((tile_end - tile_begin) * ROWS * kTileColumns);
  const int64_t scale_bytes = p.scale_type == ScaleType::kFloat ? 4 : 2;
  for (int64_t s = 0; s < p.num_segments; ++s) {
    const int64_t g = p.segment_group[s];
    for (int64_t b = p.segment_begin[s]; b < p.segment_begin[s + 1]; ++b) {
      const bool first = b == p.segment_begin[s], last = b + 1 == p.segment_begin[s + 1];
      const uint32_t* block = p.qweight + b * BITS * p.n;
      for (int64_t t = tile_begin; t < tile_end; ++t) {
        const int64_t n0 = t * kTileColumns;
        if (t + kBlockMajorPrefetchTiles < tile_end) {
          const int64_t n_ahead = n0 + kBlockMajorPrefetchTiles * kTileColumns;
          for (int w = 0; w < BITS; ++w) {
            prefetch_line(block + w * p.n + n_ahead);
            prefetch_line(block + w * p.n + n_ahead + 16);
          }
          if (last) {
            const char* scales_ahead = static_cast<const char*>(p.scales) + (g * p.n + n_ahead) * scale_bytes;
            prefetch_line(scales_ahead);
            if (scale_bytes == 4) prefetch_line(scales_ahead + 64);
            prefetch_line(p.qzeros + g * (p.n * BITS / 32) + n_ahead / 32 * BITS);
          }
        }
        float* saved = pending.data() + (t - tile_begin) * ROWS * kTileColumns;
        Accumulators<Vec, ROWS> acc;
        zero_accumulators<Vec, ROWS>(acc);
        if (!first) {
          for (int r = 0; r < ROWS; ++r)
            for (int v = 0; v < kVectors; ++v) acc[r][v] = Vec::load(saved + r * kTileColumns + v * Vec::kLanes);
        }
        accumulate_tile_block<Vec, BITS, ROWS>(p, b, n0, 0, acc);
        fold_accumulator_sets<Vec, ROWS>(acc);
        if (last) {
          load_group<Vec, BITS>(p, g, n0, scale, scaled_zero);
          finish_segment_tile<Vec, ROWS>(p, s, n0, 0, acc, scale, scaled_zero);
        } else {
          for (int r = 0; r < ROWS; ++r)
            for (int v = 0; v < kVectors; ++v) Vec::store(saved + r * kTileColumns + v * Vec::kLanes, acc[r][v]);
        }
      }
    }
  }
}

template <class Vec, int BITS, int ROWS = kBlockMajorMaxRows>
void gemv_tiles_block_major_rows(const GemvProblem& p, int64_t tile_begin, int64_t tile_end) {
  if constexpr (ROWS > 1) {
    if (p.m < ROWS) return gemv_tiles_block_major_rows<Vec, BITS, ROWS - 1>(p, tile_begin, tile_end);
  }
  gemv_tiles_block_major<Vec, BITS, ROWS>(p, tile_begin, tile_end);
}

// Block-major order up to kBlockMajorMaxRows rows (where it measured faster at 1, 2 and 4 rows; at 8 rows not
// for the bf16 kernel), segment-major beyond.
template <class Vec, int BITS>
void gemv_tiles_any_order(const GemvProblem& p, int64_t tile_begin, int64_t tile_end) {
  constexpr int kRows = kBlockMajorMaxRows < Vec::kMaxRows ? kBlockMajorMaxRows : Vec::kMaxRows;
  if (p.m <= kRows) return gemv_tiles_block_major_rows<Vec, BITS, kRows>(p, tile_begin, tile_end);
  gemv_tiles<Vec, BITS>(p, tile_begin, tile_end);
}

template <class Vec>
void gemv_tiles_for_bits(const GemvProblem& p, int64_t tile_begin, int64_t tile_end) {
  switch (p.bits) {
    case 2: gemv_tiles_any_order<Vec, 2>(p, tile_begin, tile_end); break;
    case 3: gemv_tiles_any_order<Vec, 3>(p, tile_begin, tile_end); break;
    case 4: gemv_tiles_any_order<Vec, 4>(p, tile_begin, tile_end); break;
    default:  // 8 bits has no bf16 pairs
      if constexpr (!Vec::kBf16Pairs) gemv_tiles_any_order<Vec, 8>(p, tile_begin, tile_end);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels
