// The BCQ lookup-table kernel body (design: cpu/bcq_lut.h), written once against a vector traits type and
// compiled per instruction set (bcq_lut_generic.cpp, bcq_lut_avx2.cpp, bcq_lut_avx512.cpp). Include it only
// after the including file has set its target options; everything here has internal linkage.
//
// Vec provides: kLanes, kChunkBits (2^kChunkBits == kLanes: one table per vector), kMaxRows (rows of x that
// share one shift of each plane word), kAccumulators (vector registers the accumulators may take), F (float vector), I (uint32 vector), load_u32, srl<S>,
// lookup(table, idx) (lane l gets table[low kChunkBits of idx[l]]), add, fma(a, b, c) = a*b + c, set1, load,
// store, zero, load_half / load_bf16 (kLanes 16-bit floats -> F).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "core/bcq.h"
#include "cpu/bcq_lut.h"

namespace gptq_kernels {
namespace cpu {
namespace {

// The lookups of one block are ~30 small template functions: they must inline into one loop body, or the
// accumulators would live in memory instead of registers.
#define BCQ_ALWAYS_INLINE inline __attribute__((always_inline))

template <class Vec>
struct LutShape {
  static constexpr int kBits = Vec::kChunkBits;
  static constexpr int kEntries = 1 << kBits;
  static_assert(kEntries == Vec::kLanes, "a table must be exactly one vector");
  // Tables per 32-input block: with C = 3 the last one covers the 2 inputs 30 and 31.
  static constexpr int kChunks = (core::kBlockValues + kBits - 1) / kBits;
  static constexpr int kBlockFloats = kChunks * kEntries;
};

// Each thread's prefetch runs this many tiles ahead of its loads (kBcqTileColumns * 4 bytes of each plane row).
constexpr int64_t kLutPrefetchTiles = 4;

// With one row, the (plane, vector) add chains alone are too few to hide the add latency, so even and odd chunks
// of a word add into separate accumulator sets, summed at the end.
template <int R>
constexpr int kLutSets = R == 1 ? 2 : 1;

// Vectors of a column tile handled per pass: as many as keep R * P * V * sets accumulators within the budget.
template <class Vec, int P, int R>
constexpr int lut_vectors() {
  int v = static_cast<int>(kBcqTileColumns) / Vec::kLanes;
  while (v > 1 && R * P * v * kLutSets<R> > Vec::kAccumulators) v /= 2;
  return v;
}

template <class Vec>
void build_tables(const float* x, int64_t m, int64_t k, int64_t block_begin, int64_t block_end, float* tables) {
  using S = LutShape<Vec>;
  // sign[t][e] = +1 if bit t of e is set, else -1: table = sum_t x[t] * sign[t].
  alignas(64) float sign[S::kBits][S::kEntries];
  for (int t = 0; t < S::kBits; ++t)
    for (int e = 0; e < S::kEntries; ++e) sign[t][e] = core::plane_sign(static_cast<uint32_t>(e), t);
  typename Vec::F sign_v[S::kBits];
  for (int t = 0; t < S::kBits; ++t) sign_v[t] = Vec::load(sign[t]);
  const int64_t kblocks = k / core::kBlockValues;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t b = block_begin; b < block_end; ++b) {
      const float* xb = x + r * k + b * core::kBlockValues;
      float* tb = tables + (r * kblocks + b) * S::kBlockFloats;
      for (int c = 0; c < S::kChunks; ++c) {
        const int start = c * S::kBits, width = std::min(S::kBits, core::kBlockValues - start);
        // Index bits past the block's end (the last chunk with C = 3) are always 0 and get no activation.
        auto entry = Vec::zero();
        for (int t = 0; t < width; ++t) entry = Vec::fma(Vec::set1(xb[start + t]), sign_v[t], entry);
        Vec::store(tb + c * S::kEntries, entry);
      }
    }
  }
}

template <class Vec, int P, int R, int V>
using LutAcc = typename Vec::F[kLutSets<R>][R][P][V];

// Chunk C of one plane word (plane i, vector v): one shift, then one lookup and add per row.
template <class Vec, int P, int R, int V, int C>
BCQ_ALWAYS_INLINE void lookup_chunk(typename Vec::I word, const float* tab, int64_t row_stride, int i, int v,
                                    LutAcc<Vec, P, R, V>& acc) {
  using S = LutShape<Vec>;
  const auto idx = Vec::template srl<C * S::kBits>(word);
  // The sum is an FMA by 1 rather than an add: on the build machine (Zen 5) the permutes compete with vaddps
  // for execution ports but not with FMAs, and this measured about 20% faster with AVX2 (equal with AVX-512).
  const auto one = Vec::set1(1.0f);
  for (int r = 0; r < R; ++r) {
    auto& a = acc[C % kLutSets<R>][r][i][v];
    a = Vec::fma(Vec::lookup(tab + r * row_stride + C * S::kEntries, idx), one, a);
  }
}

template <class Vec, int P, int R, int V, int... C>
BCQ_ALWAYS_INLINE void lookup_word(typename Vec::I word, const float* tab, int64_t row_stride, int i, int v,
                                   LutAcc<Vec, P, R, V>& acc, std::integer_sequence<int, C...>) {
  (lookup_chunk<Vec, P, R, V, C>(word, tab, row_stride, i, v, acc), ...);
}

// One segment (blocks of one group) x V vectors of columns starting at n0 x R rows starting at m0:
//   y[r, n] += sum_i alpha[i, n] * (sum of lookups of plane i) + offset[n] * sum(x[r] over the segment).
// alpha ([P][V * kLanes]) and offset ([V * kLanes]) are this pass's columns, in fp32.
template <class Vec, int P, int R, int V>
void segment_pass(const BcqLutProblem& p, int64_t s, int64_t n0, int64_t m0, const float* alpha,
                  const float* offset) {
  using S = LutShape<Vec>;
  constexpr int L = Vec::kLanes;
  LutAcc<Vec, P, R, V> acc;
  for (int set = 0; set < kLutSets<R>; ++set)
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < P; ++i)
        for (int v = 0; v < V; ++v) acc[set][r][i][v] = Vec::zero();

  const int64_t kblocks = p.k / core::kBlockValues;
  const int64_t row_stride = kblocks * S::kBlockFloats;
  const int64_t plane_stride = kblocks * p.n;
  const float* tables = p.tables + m0 * row_stride;
  for (int64_t b = p.segment_begin[s]; b < p.segment_begin[s + 1]; ++b) {
    const uint32_t* words = p.qplanes + b * p.n + n0;
    const float* tab = tables + b * S::kBlockFloats;
    for (int v = 0; v < V; ++v) {
      for (int i = 0; i < P; ++i) {
        const auto word = Vec::load_u32(words + i * plane_stride + v * L);
        lookup_word<Vec, P, R, V>(word, tab, row_stride, i, v, acc, std::make_integer_sequence<int, S::kChunks>{});
      }
    }
  }
  for (int set = 1; set < kLutSets<R>; ++set)
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < P; ++i)
        for (int v = 0; v < V; ++v) acc[0][r][i][v] = Vec::add(acc[0][r][i][v], acc[set][r][i][v]);
  for (int r = 0; r < R; ++r) {
    const auto x_sum = Vec::set1(static_cast<float>(p.x_segment_sums[(m0 + r) * p.num_segments + s]));
    float* y = p.y + (m0 + r) * p.n + n0;
    for (int v = 0; v < V; ++v) {
      auto out = Vec::load(y + v * L);
      for (int i = 0; i < P; ++i) out = Vec::fma(Vec::load(alpha + i * kBcqTileColumns + v * L), acc[0][r][i][v], out);
      Vec::store(y + v * L, Vec::fma(Vec::load(offset + v * L), x_sum, out));
    }
  }
}

// A whole 32-column tile for R rows and the segments [s0, s1) of a run, in passes of V vectors. alpha and offset
// hold the run's groups one after the other ([segment][P][32] and [segment][32]). The y slice of a pass stays in
// L1 while the run's segments add to it.
template <class Vec, int P, int R>
void run_tile(const BcqLutProblem& p, int64_t s0, int64_t s1, int64_t n0, int64_t m0, const float* alpha,
              const float* offset) {
  constexpr int V = lut_vectors<Vec, P, R>();
  constexpr int kPasses = static_cast<int>(kBcqTileColumns) / (V * Vec::kLanes);
  for (int pass = 0; pass < kPasses; ++pass) {
    const int c = pass * V * Vec::kLanes;
    for (int64_t s = s0; s < s1; ++s) {
      segment_pass<Vec, P, R, V>(p, s, n0 + c, m0, alpha + (s - s0) * P * kBcqTileColumns + c,
                                 offset + (s - s0) * kBcqTileColumns + c);
    }
  }
}

// run_tile for min(rows, R) rows, the row count chosen at compile time.
template <class Vec, int P, int R = Vec::kMaxRows>
void run_tile_rows(const BcqLutProblem& p, int64_t rows, int64_t s0, int64_t s1, int64_t n0, int64_t m0,
                   const float* alpha, const float* offset) {
  if constexpr (R > 1) {
    if (rows < R) return run_tile_rows<Vec, P, R - 1>(p, rows, s0, s1, n0, m0, alpha, offset);
  }
  run_tile<Vec, P, R>(p, s0, s1, n0, m0, alpha, offset);
}

template <class Vec>
BCQ_ALWAYS_INLINE typename Vec::F load_float_vector(const void* base, ScaleType type, int64_t i) {
  switch (type) {
    case ScaleType::kHalf: return Vec::load_half(static_cast<const uint16_t*>(base) + i);
    case ScaleType::kBFloat16: return Vec::load_bf16(static_cast<const uint16_t*>(base) + i);
    default: return Vec::load(static_cast<const float*>(base) + i);
  }
}

// Prefetches the kBcqTileColumns floats of type `type` at base[i] (one 64-byte line of 16-bit floats, two of fp32).
inline void prefetch_floats(const void* base, ScaleType type, int64_t i) {
  if (type == ScaleType::kFloat) {
    __builtin_prefetch(static_cast<const float*>(base) + i);
    __builtin_prefetch(static_cast<const float*>(base) + i + 16);
  } else {
    __builtin_prefetch(static_cast<const uint16_t*>(base) + i);
  }
}

// alpha[g, :, n0 .. n0+32) and offset[g, n0 .. n0+32) in fp32.
template <class Vec, int P>
void load_group(const BcqLutProblem& p, int64_t g, int64_t n0, float* alpha, float* offset) {
  for (int c = 0; c < kBcqTileColumns; c += Vec::kLanes) {
    for (int i = 0; i < P; ++i) {
      Vec::store(alpha + i * kBcqTileColumns + c, load_float_vector<Vec>(p.alpha, p.alpha_type, (g * P + i) * p.n + n0 + c));
    }
    Vec::store(offset + c, load_float_vector<Vec>(p.offset, p.offset_type, g * p.n + n0 + c));
  }
}

// Run-major order, like the uniform kernel's segment-major order: each thread sweeps its columns run by run, so
// a run's tables (a few KB per row) stay in L1 while its plane words stream through once.
template <class Vec, int P>
void lut_tiles(const BcqLutProblem& p, int64_t tile_begin, int64_t tile_end) {
  alignas(64) float alpha[kBcqMaxRunBlocks * P * kBcqTileColumns];
  alignas(64) float offset[kBcqMaxRunBlocks * kBcqTileColumns];
  const int64_t plane_stride = p.k / core::kBlockValues * p.n;
  for (int64_t run = 0; run < p.num_runs; ++run) {
    const int64_t s0 = p.run_begin[run], s1 = p.run_begin[run + 1];
    const int64_t b0 = p.segment_begin[s0], b1 = p.segment_begin[s1];
    for (int64_t t = tile_begin; t < tile_end; ++t) {
      const int64_t n0 = t * kBcqTileColumns;
      if (t + kLutPrefetchTiles < tile_end) {
        // Every (plane, block) row of the run is its own stream through memory: more than the hardware
        // prefetchers track, so ask for the tile kLutPrefetchTiles ahead explicitly (two 64-byte lines).
        const uint32_t* ahead = p.qplanes + n0 + kLutPrefetchTiles * kBcqTileColumns;
        for (int i = 0; i < P; ++i) {
          for (int64_t b = b0; b < b1; ++b) {
            __builtin_prefetch(ahead + i * plane_stride + b * p.n);
            __builtin_prefetch(ahead + i * plane_stride + b * p.n + 16);
          }
        }
        // So are the alpha and offset rows of each group (with small groups, as many streams as the planes).
        const int64_t n_ahead = n0 + kLutPrefetchTiles * kBcqTileColumns;
        for (int64_t s = s0; s < s1; ++s) {
          const int64_t g = p.segment_group[s];
          for (int i = 0; i < P; ++i) prefetch_floats(p.alpha, p.alpha_type, (g * P + i) * p.n + n_ahead);
          prefetch_floats(p.offset, p.offset_type, g * p.n + n_ahead);
        }
      }
      for (int64_t s = s0; s < s1; ++s) {
        load_group<Vec, P>(p, p.segment_group[s], n0, alpha + (s - s0) * P * kBcqTileColumns,
                           offset + (s - s0) * kBcqTileColumns);
      }
      for (int64_t m0 = 0; m0 < p.m; m0 += Vec::kMaxRows) {
        run_tile_rows<Vec, P>(p, p.m - m0, s0, s1, n0, m0, alpha, offset);
      }
    }
  }
}

template <class Vec>
void lut_tiles_for_planes(const BcqLutProblem& p, int64_t tile_begin, int64_t tile_end) {
  if (p.planes == 2) {
    lut_tiles<Vec, 2>(p, tile_begin, tile_end);
  } else {
    lut_tiles<Vec, 3>(p, tile_begin, tile_end);
  }
}

// a with its sign bit XORed by sign_mask (0 or 0x80000000). memcpy, not std::bit_cast: older torch (2.11
// among them) builds extensions as C++17.
inline float xor_sign(float a, uint32_t sign_mask) {
  uint32_t bits;
  std::memcpy(&bits, &a, sizeof(bits));
  bits ^= sign_mask;
  std::memcpy(&a, &bits, sizeof(a));
  return a;
}

// Summed like bcq_format.dequantize: the planes first, then the offset. A sign is applied by XORing the float's
// sign bit (exact, like the multiplication by +-1 it replaces), which the compiler vectorises across columns.
void dequantize_columns(const uint32_t* qplanes, const float* alpha, const float* offset, int64_t planes, int64_t k,
                        int64_t n, int64_t group_size, int64_t n_begin, int64_t n_end, float* dst, int64_t ld) {
  const int64_t kblocks = k / core::kBlockValues, width = n_end - n_begin;
  for (int64_t kk = 0; kk < k; ++kk) {
    const int64_t b = kk / core::kBlockValues;
    const int j = static_cast<int>(kk % core::kBlockValues);
    const int64_t g = core::group_of(kk, group_size);
    float* out = dst + kk * ld;
    for (int64_t i = 0; i < planes; ++i) {
      const uint32_t* w = qplanes + (i * kblocks + b) * n + n_begin;
      const float* a = alpha + (g * planes + i) * n + n_begin;
      for (int64_t c = 0; c < width; ++c) {
        const float signed_alpha = xor_sign(a[c], core::plane_sign_mask(w[c], j));
        out[c] = i == 0 ? signed_alpha : out[c] + signed_alpha;
      }
    }
    const float* o = offset + g * n + n_begin;
    for (int64_t c = 0; c < width; ++c) out[c] += o[c];
  }
}

template <class Vec>
BcqKernels make_kernels() {
  return BcqKernels{Vec::kChunkBits, LutShape<Vec>::kBlockFloats, &build_tables<Vec>, &lut_tiles_for_planes<Vec>,
                    &dequantize_columns};
}

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels
