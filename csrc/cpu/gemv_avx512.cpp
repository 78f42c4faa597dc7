// The small-batch kernel compiled for AVX-512F (16 float lanes). Chosen at run time by cpu/gemm.cpp.
// See gemv_avx2.cpp for why the includes come before the target pragma.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <utility>

#include "core/bitpack.h"
#include "cpu/bf16_pairs.h"
#include "cpu/gemv.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
// GCC's own AVX-512 headers trip this warning (their _mm512_undefined_* helpers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "cpu/vec_avx512.h"
#include "cpu/gemv_tile.h"

namespace gptq_kernels {
namespace cpu {

const GemvKernel kGemvAvx512{&gemv_tiles_for_bits<VecAvx512>, VecAvx512::kMaxRows, false};

}  // namespace cpu
}  // namespace gptq_kernels

#pragma GCC pop_options
