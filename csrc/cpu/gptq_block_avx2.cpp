// The gptq_block kernel compiled for AVX2 (8 float lanes). Chosen at run time by cpu/gptq_update.cpp.
// See gemv_avx2.cpp for why the includes come before the target pragma.
#include <immintrin.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/grid.h"
#include "cpu/gptq_block.h"

#pragma GCC push_options
// No "fma": the kernel must not fuse a product and a subtraction (see gptq_block_tile.h).
#pragma GCC target("avx2")
#pragma GCC optimize("fp-contract=off")

namespace gptq_kernels {
namespace cpu {
namespace {

struct BlockVecAvx2 {
  static constexpr int kLanes = 8;
  using F = __m256;
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void store_int(int32_t* p, F v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_cvttps_epi32(v));
  }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F round(F v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // t[i] = row i -> t[c] = column c.
  static void transpose(F (&t)[kLanes]) {
    F pairs[kLanes], quads[kLanes];
    for (int i = 0; i < kLanes; i += 2) {  // per 128-bit half h: rows i, i+1 of columns 4h, 4h+1 / 4h+2, 4h+3
      pairs[i] = _mm256_unpacklo_ps(t[i], t[i + 1]);
      pairs[i + 1] = _mm256_unpackhi_ps(t[i], t[i + 1]);
    }
    for (int i = 0; i < kLanes; i += 4) {  // quads[i + m], half h: rows i..i+3 of column 4h + m
      quads[i] = _mm256_shuffle_ps(pairs[i], pairs[i + 2], 0x44);
      quads[i + 1] = _mm256_shuffle_ps(pairs[i], pairs[i + 2], 0xEE);
      quads[i + 2] = _mm256_shuffle_ps(pairs[i + 1], pairs[i + 3], 0x44);
      quads[i + 3] = _mm256_shuffle_ps(pairs[i + 1], pairs[i + 3], 0xEE);
    }
    for (int m = 0; m < 4; ++m) {
      t[m] = _mm256_permute2f128_ps(quads[m], quads[4 + m], 0x20);
      t[4 + m] = _mm256_permute2f128_ps(quads[m], quads[4 + m], 0x31);
    }
  }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels

#include "cpu/gptq_block_tile.h"

namespace gptq_kernels {
namespace cpu {

// 24 rows side by side (three quantization chains) in runs of 4 columns: the 12 error vectors, the 3 columns
// being updated and one broadcast fill the 16 registers.
GptqBlockKernel gptq_block_kernel_avx2() { return gptq_block_kernel_for<BlockVecAvx2, 3, 4>(); }

}  // namespace cpu
}  // namespace gptq_kernels

#pragma GCC pop_options
