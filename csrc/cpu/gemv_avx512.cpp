// The small-batch kernel compiled for AVX-512F (16 float lanes). Chosen at run time by cpu/gemm.cpp.
// See gemv_avx2.cpp for why the includes come before the target pragma.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <utility>

#include "core/bitpack.h"
#include "cpu/gemv.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
// GCC's own AVX-512 headers trip this warning (their _mm512_undefined_* helpers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace gptq_kernels {
namespace cpu {
namespace {

struct VecAvx512 {
  static constexpr int kMaxRows = 4;  // 2 accumulators of the 32-column tile per row
  static constexpr int kLanes = 16;
  using F = __m512;
  using I = __m512i;
  static I load_u32(const uint32_t* p) { return _mm512_loadu_si512(p); }
  template <int S>
  static I srl(I v) { return S == 0 ? v : _mm512_srli_epi32(v, S); }
  template <int S>
  static I sll(I v) { return _mm512_slli_epi32(v, S); }
  static I or_(I a, I b) { return _mm512_or_si512(a, b); }
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

#include "cpu/gemv_tile.h"

namespace gptq_kernels {
namespace cpu {

void gemv_tiles_avx512(const GemvProblem& p, int64_t tile_begin, int64_t tile_end) {
  gemv_tiles_for_bits<VecAvx512>(p, tile_begin, tile_end);
}

}  // namespace cpu
}  // namespace gptq_kernels

#pragma GCC pop_options
