// The small-batch kernel for CPUs without AVX2 (and non-x86 CPUs): the same body over plain arrays of
// 8 floats, which the compiler vectorises for the baseline instruction set.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <utility>

#include "core/bitpack.h"
#include "cpu/bf16_pairs.h"
#include "cpu/gemv.h"

namespace gptq_kernels {
namespace cpu {
namespace {

struct VecGeneric {
  static constexpr int kMaxRows = 4;
  static constexpr int kLanes = 8;
  static constexpr bool kWordBarrier = true;
  static constexpr bool kBf16Pairs = false;
  struct F { float v[kLanes]; };
  struct I { uint32_t v[kLanes]; };
  static I load_u32(const uint32_t* p) { I r; for (int i = 0; i < kLanes; ++i) r.v[i] = p[i]; return r; }
  static I load_u32_first(const uint32_t* p, int count) {
    I r{};
    for (int i = 0; i < count; ++i) r.v[i] = p[i];
    return r;
  }
  template <int S>
  static I srl(I a) { for (auto& e : a.v) e >>= S; return a; }
  template <int S>
  static I sll(I a) { for (auto& e : a.v) e <<= S; return a; }
  static I or_(I a, I b) { for (int i = 0; i < kLanes; ++i) a.v[i] |= b.v[i]; return a; }
  static I add_u32(I a, uint32_t c) { for (auto& e : a.v) e += c; return a; }
  static I permute(I words, I index) { I r; for (int i = 0; i < kLanes; ++i) r.v[i] = words.v[index.v[i]]; return r; }
  static I srlv(I a, I s) { for (int i = 0; i < kLanes; ++i) a.v[i] = s.v[i] < 32 ? a.v[i] >> s.v[i] : 0; return a; }
  static I sllv(I a, I s) { for (int i = 0; i < kLanes; ++i) a.v[i] = s.v[i] < 32 ? a.v[i] << s.v[i] : 0; return a; }
  static I and_mask(I a, uint32_t mask) { for (auto& e : a.v) e &= mask; return a; }
  static F to_float(I a) { F r; for (int i = 0; i < kLanes; ++i) r.v[i] = static_cast<float>(a.v[i]); return r; }
  static F fma(F a, F b, F c) { for (int i = 0; i < kLanes; ++i) c.v[i] += a.v[i] * b.v[i]; return c; }
  static F add(F a, F b) { for (int i = 0; i < kLanes; ++i) a.v[i] += b.v[i]; return a; }
  static F mul(F a, F b) { for (int i = 0; i < kLanes; ++i) a.v[i] *= b.v[i]; return a; }
  static F load_half(const uint16_t* p) {
    F r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = static_cast<float>(c10::Half(p[i], c10::Half::from_bits()));
    return r;
  }
  static F load_bf16(const uint16_t* p) {
    F r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = static_cast<float>(c10::BFloat16(p[i], c10::BFloat16::from_bits()));
    return r;
  }
  static F set1(float x) { F r; for (auto& e : r.v) e = x; return r; }
  static F load(const float* p) { F r; for (int i = 0; i < kLanes; ++i) r.v[i] = p[i]; return r; }
  static void store(float* p, F a) { for (int i = 0; i < kLanes; ++i) p[i] = a.v[i]; }
  static F zero() { return set1(0.0f); }
};

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels

#include "cpu/gemv_tile.h"

namespace gptq_kernels {
namespace cpu {

const GemvKernel kGemvGeneric{&gemv_tiles_for_bits<VecGeneric>, VecGeneric::kMaxRows, false};

}  // namespace cpu
}  // namespace gptq_kernels
