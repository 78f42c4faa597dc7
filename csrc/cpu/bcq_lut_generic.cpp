// The BCQ lookup-table kernel for CPUs without AVX2 (and non-x86 CPUs): the same body over plain arrays of
// 8 floats with 8-entry tables looked up lane by lane.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <utility>

#include "core/bcq.h"
#include "cpu/bcq_lut.h"

namespace gptq_kernels {
namespace cpu {
namespace {

struct BcqVecGeneric {
  static constexpr int kLanes = 8;
  static constexpr int kMaxRows = 4;
  static constexpr int kChunkBits = 3;
  static constexpr int kAccumulators = 12;
  struct F { float v[kLanes]; };
  struct I { uint32_t v[kLanes]; };
  static I load_u32(const uint32_t* p) { I r; for (int l = 0; l < kLanes; ++l) r.v[l] = p[l]; return r; }
  template <int S>
  static I srl(I a) { for (auto& e : a.v) e >>= S; return a; }
  static F lookup(const float* table, I idx) {
    F r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = table[idx.v[l] & (kLanes - 1)];
    return r;
  }
  static F add(F a, F b) { for (int l = 0; l < kLanes; ++l) a.v[l] += b.v[l]; return a; }
  static F fma(F a, F b, F c) { for (int l = 0; l < kLanes; ++l) c.v[l] += a.v[l] * b.v[l]; return c; }
  static F set1(float x) { F r; for (auto& e : r.v) e = x; return r; }
  static F load(const float* p) { F r; for (int l = 0; l < kLanes; ++l) r.v[l] = p[l]; return r; }
  static void store(float* p, F a) { for (int l = 0; l < kLanes; ++l) p[l] = a.v[l]; }
  static F zero() { return set1(0.0f); }
  static F load_half(const uint16_t* p) {
    F r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = static_cast<float>(c10::Half(p[l], c10::Half::from_bits()));
    return r;
  }
  static F load_bf16(const uint16_t* p) {
    F r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = static_cast<float>(c10::BFloat16(p[l], c10::BFloat16::from_bits()));
    return r;
  }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels

#include "cpu/bcq_lut_tile.h"

namespace gptq_kernels {
namespace cpu {

BcqKernels bcq_kernels_generic() { return make_kernels<BcqVecGeneric>(); }

}  // namespace cpu
}  // namespace gptq_kernels
