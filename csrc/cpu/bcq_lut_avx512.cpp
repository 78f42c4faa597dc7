// The BCQ lookup-table kernel compiled for AVX-512F (16 float lanes, 16-entry tables looked up with vpermps zmm).
// Chosen at run time by cpu/bcq_ops.cpp. See gemv_avx2.cpp for why the includes come before the target pragma.
#include <immintrin.h>

#include <algorithm>
#include <utility>

#include "core/bcq.h"
#include "cpu/bcq_lut.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
// GCC's own AVX-512 headers trip this warning (their _mm512_undefined_* helpers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace gptq_kernels {
namespace cpu {
namespace {

struct BcqVecAvx512 {
  static constexpr int kLanes = 16;
  static constexpr int kMaxRows = 4;
  static constexpr int kChunkBits = 4;
  static constexpr int kAccumulators = 24;  // of 32 zmm registers
  using F = __m512;
  using I = __m512i;
  static I load_u32(const uint32_t* p) { return _mm512_loadu_si512(p); }
  template <int S>
  static I srl(I v) { return S == 0 ? v : _mm512_srli_epi32(v, S); }
  // vpermps zmm reads only the low 4 bits of each index lane, so the index needs no mask.
  static F lookup(const float* table, I idx) { return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(table)); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F zero() { return _mm512_setzero_ps(); }
  static F load_half(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static F load_bf16(const uint16_t* p) {  // bfloat16 is the top half of a float32
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels

#include "cpu/bcq_lut_tile.h"

namespace gptq_kernels {
namespace cpu {

BcqKernels bcq_kernels_avx512() { return make_kernels<BcqVecAvx512>(); }

}  // namespace cpu
}  // namespace gptq_kernels

#pragma GCC pop_options
