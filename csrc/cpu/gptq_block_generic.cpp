// The gptq_block kernel for CPUs without AVX2 (and non-x86 CPUs): the same body over vectors of 4 floats,
// one baseline SSE or NEON register.
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "core/grid.h"
#include "cpu/gptq_block.h"

#pragma GCC push_options
// Exactness (see gptq_block_tile.h): a product and a subtraction must stay two roundings, also where the
// baseline has a fused multiply-add (AArch64).
#pragma GCC optimize("fp-contract=off")

namespace gptq_kernels {
namespace cpu {
namespace {

// GCC/Clang vector types: each operation is one baseline vector instruction.
struct BlockVecGeneric {
  static constexpr int kLanes = 4;
  typedef float F __attribute__((vector_size(kLanes * sizeof(float))));
  typedef int32_t I __attribute__((vector_size(kLanes * sizeof(int32_t))));
  static F load(const float* p) { F r; std::memcpy(&r, p, sizeof(r)); return r; }
  static void store(float* p, F a) { std::memcpy(p, &a, sizeof(a)); }
  static void store_int(int32_t* p, F a) {
    const I r = __builtin_convertvector(a, I);
    std::memcpy(p, &r, sizeof(r));
  }
  static F set1(float x) { return F{x, x, x, x}; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F div(F a, F b) { return a / b; }
  static F min(F a, F b) { return b < a ? b : a; }
  static F max(F a, F b) { return b > a ? b : a; }
  // Ties to even without rintf, which the baseline x86-64 cannot inline (it has no rounding instruction):
  // below 2^23, adding 2^23 leaves no fraction bits and rounds in the current (nearest-even) mode; from 2^23
  // on every float is whole already.
  static F round(F a) {
    const F no_fraction = set1(8388608.0f);  // 2^23
    const I sign = (I)a & static_cast<int32_t>(0x80000000u);  // vector casts reinterpret the bits
    const F magnitude = (F)((I)a & 0x7fffffff);
    const F rounded = magnitude < no_fraction ? (magnitude + no_fraction) - no_fraction : magnitude;
    return (F)((I)rounded | sign);
  }
  static void transpose(F (&t)[kLanes]) {
    for (int i = 0; i < kLanes; ++i) {
      for (int c = i + 1; c < kLanes; ++c) {
        const float x = t[i][c];
        t[i][c] = t[c][i];
        t[c][i] = x;
      }
    }
  }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels

#include "cpu/gptq_block_tile.h"

namespace gptq_kernels {
namespace cpu {

// 12 rows side by side (three quantization chains) in runs of 3 columns: 9 error vectors, the 3 columns being
// updated and a broadcast stay within the 16 SSE registers.
GptqBlockKernel gptq_block_kernel_generic() { return gptq_block_kernel_for<BlockVecGeneric, 3, 3>(); }

}  // namespace cpu
}  // namespace gptq_kernels

#pragma GCC pop_options
