// The BCQ lookup-table kernel compiled for AVX2 + FMA (8 float lanes, 8-entry tables looked up with vpermps).
// Chosen at run time by cpu/bcq_ops.cpp. See gemv_avx2.cpp for why the includes come before the target pragma.
#include <immintrin.h>

#include <algorithm>
#include <utility>

#include "core/bcq.h"
#include "cpu/bcq_lut.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace gptq_kernels {
namespace cpu {
namespace {

struct BcqVecAvx2 {
  static constexpr int kLanes = 8;
  static constexpr int kMaxRows = 2;
  static constexpr int kChunkBits = 3;
  static constexpr int kAccumulators = 12;  // of 16 ymm registers: the rest hold a word, an index and a lookup
  using F = __m256;
  using I = __m256i;
  static I load_u32(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  template <int S>
  static I srl(I v) { return S == 0 ? v : _mm256_srli_epi32(v, S); }
  // vpermps reads only the low 3 bits of each index lane, so the index needs no mask.
  static F lookup(const float* table, I idx) { return _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), idx); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F zero() { return _mm256_setzero_ps(); }
  static F load_half(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F load_bf16(const uint16_t* p) {  // bfloat16 is the top half of a float32
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels

#include "cpu/bcq_lut_tile.h"

namespace gptq_kernels {
namespace cpu {

BcqKernels bcq_kernels_avx2() { return make_kernels<BcqVecAvx2>(); }

}  // namespace cpu
}  // namespace gptq_kernels

#pragma GCC pop_options
