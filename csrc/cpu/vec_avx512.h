// Vector traits of the fused kernel (cpu/gemv_tile.h) for AVX-512F: 16 float lanes. Shared by gemv_avx512.cpp and
// gemv_avx512bf16.cpp; include it after the including file's target pragma (everything here has internal linkage).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace gptq_kernels {
namespace cpu {
namespace {

struct VecAvx512 {
  // 2 accumulators of the 32-column tile per row, 16 of the 32 registers: the rest hold words, decoded weights and
  // x. (Sixteen rows doing the tile's halves in turn, one accumulator each, measured slower at batch 16.)
  static constexpr int kMaxRows = 8;
  static constexpr int kLanes = 16;
  static constexpr bool kWordBarrier = false;
  static constexpr bool kBf16Pairs = false;
  using F = __m512;
  using I = __m512i;
  static I load_u32(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static I load_u32_first(const uint32_t* p, int count) {  // masked: no fault past the last word
    return _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << count) - 1), p);
  }
  template <int S>
  static I srl(I v) { return S == 0 ? v : _mm512_srli_epi32(v, S); }
  template <int S>
  static I sll(I v) { return _mm512_slli_epi32(v, S); }
  static I or_(I a, I b) { return _mm512_or_si512(a, b); }
  static I add_u32(I v, uint32_t c) { return _mm512_add_epi32(v, _mm512_set1_epi32(static_cast<int>(c))); }
  static I permute(I words, I index) { return _mm512_permutexvar_epi32(index, words); }
  static I srlv(I v, I s) { return _mm512_srlv_epi32(v, s); }
  static I sllv(I v, I s) { return _mm512_sllv_epi32(v, s); }
  static I and_mask(I v, uint32_t mask) { return _mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(mask))); }
  static F to_float(I v) { return _mm512_cvtepi32_ps(v); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F load_half(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static F load_bf16(const uint16_t* p) {  // bfloat16 is the top half of a float32
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F zero() { return _mm512_setzero_ps(); }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels
