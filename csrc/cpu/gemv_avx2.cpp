// The small-batch kernel compiled for AVX2 + FMA (8 float lanes). Chosen at run time by cpu/gemm.cpp.
//
// Everything included before the target pragma is compiled for the baseline instruction set, which
// keeps shared inline functions (c10, the bit helpers) free of AVX2 code in every translation unit.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <utility>

#include "core/bitpack.h"
#include "cpu/bf16_pairs.h"
#include "cpu/gemv.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace gptq_kernels {
namespace cpu {
namespace {

struct VecAvx2 {
  static constexpr int kMaxRows = 2;  // 4 accumulators of the 32-column tile per row
  static constexpr int kLanes = 8;
  static constexpr bool kWordBarrier = true;
  static constexpr bool kBf16Pairs = false;
  using F = __m256;
  using I = __m256i;
  static I load_u32(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I load_u32_first(const uint32_t* p, int count) {  // masked: no fault past the last word
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane));
  }
  template <int S>
  static I srl(I v) { return S == 0 ? v : _mm256_srli_epi32(v, S); }
  template <int S>
  static I sll(I v) { return _mm256_slli_epi32(v, S); }
  static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  static I add_u32(I v, uint32_t c) { return _mm256_add_epi32(v, _mm256_set1_epi32(static_cast<int>(c))); }
  static I permute(I words, I index) { return _mm256_permutevar8x32_epi32(words, index); }
  static I srlv(I v, I s) { return _mm256_srlv_epi32(v, s); }
  static I sllv(I v, I s) { return _mm256_sllv_epi32(v, s); }
  static I and_mask(I v, uint32_t mask) { return _mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(mask))); }
  static F to_float(I v) { return _mm256_cvtepi32_ps(v); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F load_half(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F load_bf16(const uint16_t* p) {  // bfloat16 is the top half of a float32
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F zero() { return _mm256_setzero_ps(); }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels

#include "cpu/gemv_tile.h"

namespace gptq_kernels {
namespace cpu {

const GemvKernel kGemvAvx2{&gemv_tiles_for_bits<VecAvx2>, VecAvx2::kMaxRows, false};

}  // namespace cpu
}  // namespace gptq_kernels

#pragma GCC pop_options
