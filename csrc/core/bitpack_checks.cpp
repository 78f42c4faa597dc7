// Compile-time checks of the bit helpers the CUDA kernels use in registers (core/bitpack.h), run by every CPU
// build: if one of them disagreed with the layout, the extension would not compile.
//
// Each check packs a known pattern with an independent bit-by-bit writer and reads every value back.
#include <cstdint>
#include <version>
#if defined(__cpp_lib_bit_cast)
#include <bit>
#endif

#include "core/bitpack.h"

namespace gptq_kernels {
namespace core {
namespace {

// Value j of the test pattern: a mix of all-ones, zero and alternating bits for every width.
constexpr uint32_t pattern(int j, int bits) { return (static_cast<uint32_t>(j) * 2654435761u >> 7) & value_mask(bits); }

// The block of 32 pattern values, written one stream bit at a time (stream bit t is word t / 32, bit t % 32).
template <int BITS>
struct PatternBlock {
  uint32_t w[BITS] = {};
  constexpr PatternBlock() {
    for (int j = 0; j < kBlockValues; ++j) {
      for (int b = 0; b < BITS; ++b) {
        const int t = j * BITS + b;
        w[t / 32] |= ((pattern(j, BITS) >> b) & 1u) << (t % 32);
      }
    }
  }
};

template <int BITS>
constexpr bool extract_from_words_reads_every_value() {
  constexpr PatternBlock<BITS> block;
  for (int j = 0; j < kBlockValues; ++j) {
    if (extract_from_words<BITS>(block.w, j) != pattern(j, BITS)) return false;
  }
  return true;
}

static_assert(extract_from_words_reads_every_value<2>(), "2-bit extract_from_words");
static_assert(extract_from_words_reads_every_value<3>(), "3-bit extract_from_words");
static_assert(extract_from_words_reads_every_value<4>(), "4-bit extract_from_words");
static_assert(extract_from_words_reads_every_value<8>(), "8-bit extract_from_words");

#if defined(__cpp_lib_bit_cast)  // C++20 (recent torch versions build extensions as C++20)
// The kernels' exact int -> float conversion (cuda/common.cuh): the float with bits 0x4B000000 | q is 2^23 + q
// for every q below 2^23, so subtracting 2^23 + zero gives q - zero exactly.
constexpr bool magic_float_is_exact() {
  for (uint32_t q = 0; q < 256; ++q) {
    if (std::bit_cast<float>(0x4B000000u | q) != 8388608.0f + static_cast<float>(q)) return false;
    if (std::bit_cast<float>(0x4B000000u | q) - (8388608.0f + 3.0f) != static_cast<float>(q) - 3.0f) return false;
  }
  return true;
}
static_assert(magic_float_is_exact(), "2^23 magic-number conversion");
#endif

}  // namespace
}  // namespace core
}  // namespace gptq_kernels
