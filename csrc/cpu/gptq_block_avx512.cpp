// The gptq_block kernel compiled for AVX-512F (16 float lanes). Chosen at run time by cpu/gptq_update.cpp.
// See gemv_avx2.cpp for why the includes come before the target pragma.
#include <immintrin.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/grid.h"
#include "cpu/gptq_block.h"

#pragma GCC push_options
#pragma GCC target("avx512f")
// Exactness (see gptq_block_tile.h): a product and a subtraction must stay two roundings.
#pragma GCC optimize("fp-contract=off")
// GCC's own AVX-512 headers trip these warnings (their _mm512_undefined_* helpers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace gptq_kernels {
namespace cpu {
namespace {

struct BlockVecAvx512 {
  static constexpr int kLanes = 16;
  using F = __m512;
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store_int(int32_t* p, F v) { _mm512_storeu_si512(p, _mm512_cvttps_epi32(v)); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F round(F v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // t[i] = row i -> t[c] = column c, in four rounds of shuffles.
  static void transpose(F (&t)[kLanes]) {
    F pairs[kLanes], quads[kLanes];
    for (int i = 0; i < kLanes; i += 2) {  // per 128-bit lane k: rows i, i+1 of columns 4k, 4k+1 / 4k+2, 4k+3
      pairs[i] = _mm512_unpacklo_ps(t[i], t[i + 1]);
      pairs[i + 1] = _mm512_unpackhi_ps(t[i], t[i + 1]);
    }
    for (int i = 0; i < kLanes; i += 4) {  // quads[i + m], lane k: rows i..i+3 of column 4k + m
      quads[i] = _mm512_shuffle_ps(pairs[i], pairs[i + 2], 0x44);
      quads[i + 1] = _mm512_shuffle_ps(pairs[i], pairs[i + 2], 0xEE);
      quads[i + 2] = _mm512_shuffle_ps(pairs[i + 1], pairs[i + 3], 0x44);
      quads[i + 3] = _mm512_shuffle_ps(pairs[i + 1], pairs[i + 3], 0xEE);
    }
    for (int m = 0; m < 4; ++m) {
      // Rows 0-7 and 8-15 of columns m, 8+m (even) and 4+m, 12+m (odd), then all 16 rows of each column.
      const F low_even = _mm512_shuffle_f32x4(quads[m], quads[4 + m], 0x88);
      const F low_odd = _mm512_shuffle_f32x4(quads[m], quads[4 + m], 0xDD);
      const F high_even = _mm512_shuffle_f32x4(quads[8 + m], quads[12 + m], 0x88);
      const F high_odd = _mm512_shuffle_f32x4(quads[8 + m], quads[12 + m], 0xDD);
      t[m] = _mm512_shuffle_f32x4(low_even, high_even, 0x88);
      t[8 + m] = _mm512_shuffle_f32x4(low_even, high_even, 0xDD);
      t[4 + m] = _mm512_shuffle_f32x4(low_odd, high_odd, 0x88);
      t[12 + m] = _mm512_shuffle_f32x4(low_odd, high_odd, 0xDD);
    }
  }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels

#include "cpu/gptq_block_tile.h"

namespace gptq_kernels {
namespace cpu {

// 64 rows side by side (four independent quantization chains) in runs of 4 columns: 16 error vectors in
// registers. Measured on Zen 5 against 1-8 vectors and runs of 2-12: 1 or 2 vectors leave the chains' latency
// exposed, and more registers than this spill.
GptqBlockKernel gptq_block_kernel_avx512() { return gptq_block_kernel_for<BlockVecAvx512, 4, 4>(); }

}  // namespace cpu
}  // namespace gptq_kernels

#pragma GCC pop_options
