// Bit-level layout of GPTQ checkpoints, shared by the CPU and CUDA kernels.
//
// A packed tensor stores b-bit unsigned integers (b in {2, 3, 4, 8}) as a little-endian bit stream of
// int32 words along one dimension: value i of a column occupies stream bits [i*b, (i+1)*b), and stream
// bit t lives in word t/32 at bit t%32. Thirty-two values always fill exactly b words, so we call those
// b words a *block*. For b = 2, 4, 8 no value crosses a word; for b = 3 two values do:
//
//   bit:    31                                        0     values 0..9 are 000..999, 10..21 are a..l,
//   word 0: aa 999 888 777 666 555 444 333 222 111 000         22..31 are m..v (MSB on the left)
//   word 1: l kkk jjj iii hhh ggg fff eee ddd ccc bbb a        value 10 (a) straddles words 0 and 1,
//   word 2: vvv uuu ttt sss rrr qqq ppp ooo nnn mmm ll         value 21 (l) straddles words 1 and 2.
//
// qweight packs along K (rows), qzeros along N (columns); both use these helpers.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define GPTQ_HD __host__ __device__ __forceinline__
#else
#define GPTQ_HD inline
#endif

namespace gptq_kernels {
namespace core {

constexpr int kBlockValues = 32;  // values per block; a block is `bits` int32 words

GPTQ_HD constexpr bool is_supported_bits(int64_t bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}
GPTQ_HD constexpr uint32_t value_mask(int bits) { return (1u << bits) - 1u; }

// Position of value j (0..31) of a block: which word, which bit, and whether it spills into the next word.
GPTQ_HD constexpr int word_of(int j, int bits) { return (j * bits) >> 5; }
GPTQ_HD constexpr int shift_of(int j, int bits) { return (j * bits) & 31; }
GPTQ_HD constexpr bool straddles(int j, int bits) { return shift_of(j, bits) + bits > 32; }

// Value j of the block whose words are words[0], words[stride], ..., words[(bits-1)*stride].
GPTQ_HD uint32_t extract(const uint32_t* words, int64_t stride, int j, int bits) {
  const int w = word_of(j, bits), s = shift_of(j, bits);
  uint32_t v = words[w * stride] >> s;
  if (s + bits > 32) v |= words[(w + 1) * stride] << (32 - s);
  return v & value_mask(bits);
}

// Writes value j of a block into words that start zeroed (ORs it in).
GPTQ_HD void insert(uint32_t* words, int64_t stride, int j, int bits, uint32_t value) {
  const int w = word_of(j, bits), s = shift_of(j, bits);
  value &= value_mask(bits);
  words[w * stride] |= value << s;
  if (s + bits > 32) words[(w + 1) * stride] |= value >> (32 - s);
}

// Value j of a block whose BITS words are held in an array (registers on the GPU). Meant for a j that is a
// compile-time constant after unrolling: every shift becomes an immediate and the straddle test disappears.
template <int BITS>
GPTQ_HD constexpr uint32_t extract_from_words(const uint32_t (&w)[BITS], int j) {
  const int word = word_of(j, BITS), shift = shift_of(j, BITS);
  uint32_t v = w[word] >> shift;
  // (The index is clamped only to keep the never-taken read past the last word in bounds.)
  if (straddles(j, BITS)) v |= w[word + 1 < BITS ? word + 1 : BITS - 1] << (32 - shift);
  // The top value of a word needs no mask: the shift already cleared everything above it.
  return shift + BITS == 32 ? v : (v & value_mask(BITS));
}

// Value i of a whole packed column (any i, not only within a block).
GPTQ_HD uint32_t extract_at(const uint32_t* column, int64_t stride, int64_t i, int bits) {
  const int64_t block = i / kBlockValues;
  return extract(column + block * bits * stride, stride, static_cast<int>(i % kBlockValues), bits);
}

// One block of a row-gathered packed column: value j of the result is value index[j] of the source column
// (words `stride` apart, `rows` values), for j = 0..31; the block's `bits` words go to out[0..bits). Indices
// outside [0, rows) are clamped: the CUDA op cannot check them without waiting for the GPU (the CPU op checks
// them first). permute_rows, the act-order repack, is this for every block and column.
template <typename Index>
GPTQ_HD void gather_block(const uint32_t* column, int64_t stride, int64_t rows, const Index* index, int bits,
                          uint32_t* out) {
  for (int i = 0; i < bits; ++i) out[i] = 0u;
  for (int j = 0; j < kBlockValues; ++j) {
    int64_t row = static_cast<int64_t>(index[j]);
    row = row < 0 ? 0 : (row >= rows ? rows - 1 : row);
    insert(out, 1, j, bits, extract_at(column, stride, row, bits));
  }
}

// Groups: G = ceil(K / group_size); group_size == -1 means one group spanning all of K.
GPTQ_HD constexpr int64_t num_groups(int64_t k, int64_t group_size) {
  return group_size == -1 ? 1 : (k + group_size - 1) / group_size;
}
GPTQ_HD constexpr int64_t group_of(int64_t k_index, int64_t group_size) {
  return group_size == -1 ? 0 : k_index / group_size;
}

// Zero point of column n of one qzeros row (the row of one group, packed along N). Checkpoints store zero-1
// (the AutoGPTQ "v1" convention) the way GPTQModel writes it: for 2, 4 and 8 bits the ones are subtracted
// from whole 32-bit words, so a zero point of 0 borrows from the next field, and adding them back word by
// word undoes that exactly; 3-bit values cross words and are stored value by value, modulo 2^3. Both agree
// with "stored + 1" whenever no zero point is 0. gptq_kernels/reference.py's zeros_from_checkpoint mirrors this.
GPTQ_HD constexpr uint32_t ones_per_field(int bits) {
  return bits == 2 ? 0x55555555u : bits == 4 ? 0x11111111u : bits == 8 ? 0x01010101u : 0u;
}
GPTQ_HD uint32_t zero_point(const uint32_t* row, int64_t n, int bits) {
  if (bits == 3) return (extract_at(row, 1, n, bits) + 1u) & value_mask(bits);
  const int64_t per_word = 32 / bits;
  const uint32_t word = row[n / per_word] + ones_per_field(bits);  // wraps modulo 2^32, as intended
  return (word >> (bits * (n % per_word))) & value_mask(bits);
}

}  // namespace core
}  // namespace gptq_kernels
