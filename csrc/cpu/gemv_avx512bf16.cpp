// The small-batch kernel for bf16 activations on CPUs with AVX512_BF16: vdpbf16ps multiplies two weights of a
// column per lane (cpu/bf16_pairs.h), 32 multiply-adds per instruction. Chosen at run time by cpu/gemm.cpp for
// bf16 activations and 2, 3 or 4 bits. See gemv_avx2.cpp for why the includes come before the target pragma.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <utility>

#include "core/bitpack.h"
#include "cpu/bf16_pairs.h"
#include "cpu/gemv.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")
// GCC's own AVX-512 headers trip this warning (their _mm512_undefined_* helpers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "cpu/vec_avx512.h"

namespace gptq_kernels {
namespace cpu {
namespace {

struct VecAvx512Bf16 : VecAvx512 {
  static constexpr bool kBf16Pairs = true;
  // (word & mask) | kBf16PairBase: one vpternlogd (0xEA is A & B | C).
  static I bf16_pair_lanes(I word, uint32_t mask) {
    return _mm512_ternarylogic_epi32(word, _mm512_set1_epi32(static_cast<int>(mask)),
                                     _mm512_set1_epi32(static_cast<int>(kBf16PairBase)), 0xEA);
  }
  // acc += lo(lanes) * lo(x_pair) + hi(lanes) * hi(x_pair), x_pair broadcast to every lane.
  static F dot_pairs(F acc, I lanes, uint32_t x_pair) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(lanes),
                            reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(x_pair))));
  }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels

#include "cpu/gemv_tile.h"

namespace gptq_kernels {
namespace cpu {

const GemvKernel kGemvAvx512Bf16{&gemv_tiles_for_bits<VecAvx512Bf16>, VecAvx512Bf16::kMaxRows, true};

}  // namespace cpu
}  // namespace gptq_kernels

#pragma GCC pop_options
