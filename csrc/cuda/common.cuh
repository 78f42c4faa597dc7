// Device helpers shared by the CUDA kernels: float conversions, group lookup and the exact integer-to-float
// trick the dequantizing loops use. Deliberately free of ATen headers, so the files that instantiate the
// heavy kernel templates compile quickly (and in parallel) with nvcc alone.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/bitpack.h"
#include "core/fragment_order.h"

// Kernel launches are written GPTQ_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...) rather than with
// <<< >>>, so that the same sources also compile as plain C++ on top of the CPU emulator in tests/emulation
// (GPTQ_KERNELS_EMULATION), which runs every kernel thread as a fiber to test the kernels without a GPU.
#ifdef GPTQ_KERNELS_EMULATION
#define GPTQ_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ((void)(stream), ::gptq_emulation::launch(grid, block, shared_bytes, __VA_ARGS__))
#else
#define GPTQ_LAUNCH(grid, block, shared_bytes, stream, ...) __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#endif

namespace gptq_kernels {
namespace cuda {

// The CTA's dynamic shared memory (the size given at launch), 16-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
#ifdef GPTQ_KERNELS_EMULATION
  return ::gptq_emulation::dynamic_shared_memory();
#else
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  return dynamic_shared;
#endif
}

// The element type of a tensor the kernels only read a few values of (scales, bias): a run-time switch that
// is uniform across the grid costs less than multiplying the template instantiations by three.
enum class FloatType : int { kHalf, kBFloat16, kFloat };

__device__ __forceinline__ float load_float(const void* p, int64_t i, FloatType t) {
  switch (t) {
    case FloatType::kHalf: return __half2float(static_cast<const __half*>(p)[i]);
    case FloatType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// Activation types the fused kernels are built for; fp32 activations take the dequantize + cuBLAS path.
enum class ActType : int { kHalf, kBFloat16 };

// Arguments of both fused kernels (gemv_kernel.cuh, gemm_mma_kernel.cuh), filled once per call in gemm.cu.
struct FusedGemmParams {
  const void* x;             // [m, k] of the activation type, rows ldx apart, unit stride along k
                             // (the tensor-core kernel also needs ldx a multiple of 8)
  int64_t ldx;
  const uint32_t* qweight;   // [k * bits / 32, n], 16-byte aligned
  const uint32_t* qzeros;    // [groups, n * bits / 32]
  const void* scales;        // [groups, n] of scale_type
  FloatType scale_type;
  const int32_t* g_idx;      // [k] or nullptr (then g = k / group_size)
  int group_size;            // -1: one group
  int groups;
  bool fragment_order;       // qweight in fragment order (core/fragment_order.h; 2- and 4-bit only)
  int m, k, n;
  int blocks_per_cta;        // 32-row blocks of K per CTA (grid.z = ceil(k / 32 / blocks_per_cta));
                             // the tensor-core kernel needs whole K tiles (an even count)
  void* y;                   // [m, n] of the activation type; written when gridDim.z == 1
  const void* bias;          // [n] of bias_type or nullptr; added when gridDim.z == 1
  FloatType bias_type;
  float* workspace;          // [gridDim.z, m, n] fp32 partial sums; written when gridDim.z > 1
};

template <typename T>
struct FloatConvert;
template <>
struct FloatConvert<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct FloatConvert<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct FloatConvert<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};

// Group of input channel k. The CUDA ops cannot validate g_idx values without a host synchronisation, so a
// bad entry is clamped into [0, groups): the result is then wrong but no memory outside the tensors is read.
__device__ __forceinline__ int group_at(const int32_t* g_idx, int64_t k, int group_size, int groups) {
  const int g = g_idx != nullptr ? __ldg(g_idx + k) : (group_size == -1 ? 0 : static_cast<int>(k / group_size));
  return min(max(g, 0), groups - 1);
}

// group_at without g_idx for rows visited in increasing order: one comparison per step instead of a 64-bit
// division (which costs a kernel's inner loop some 25 instructions). Clamped to [0, groups) like group_at.
class GroupCursor {
 public:
  __device__ __forceinline__ GroupCursor(int64_t first_row, int group_size, int groups) : groups_(groups) {
    if (group_size == -1) {
      group_ = 0, size_ = 0, next_ = INT64_MAX;
    } else {
      group_ = static_cast<int>(first_row / group_size), size_ = group_size;
      next_ = static_cast<int64_t>(group_ + 1) * group_size;
    }
  }
  // The group of `row`, which must not be smaller than the previous call's.
  __device__ __forceinline__ int at(int64_t row) {
    while (row >= next_) ++group_, next_ += size_;
    return min(group_, groups_ - 1);
  }
  // The group of `row`: group_at when the layer has a g_idx, else at(row).
  __device__ __forceinline__ int group_of(const int32_t* g_idx, int64_t row, int group_size) {
    return g_idx == nullptr ? at(row) : group_at(g_idx, row, group_size, groups_);
  }

 private:
  int group_, size_, groups_;
  int64_t next_;  // first row of the next group
};

// Exact int -> float without the I2F unit: ORing q < 2^23 into the mantissa of 2^23 gives the float 2^23 + q.
// Subtracting 2^23 + zero then yields q - zero exactly, so the zero point costs no extra instruction.
constexpr uint32_t kMagicBits = 0x4B000000u;  // the float 2^23
constexpr float kMagicFloat = 8388608.0f;

__device__ __forceinline__ float magic_float(uint32_t q) { return __uint_as_float(kMagicBits | q); }

// kMagicFloat + zero point of (group row, column n), read from qzeros (packed along N, stores zero-1).
template <int BITS>
__device__ __forceinline__ float magic_zero(const uint32_t* qzeros, int64_t group, int64_t n_cols, int64_t n) {
  const uint32_t* row = qzeros + group * (n_cols * BITS / 32);
  return kMagicFloat + static_cast<float>(core::zero_point(row, n, BITS));
}

// (a & mask) | bits as one LOP3: given two constants, ptxas emits an AND and an OR (one immediate each).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t bits) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(a), "r"(mask), "r"(bits));  // 0xea: (a & b) | c
  return r;
#else
  return (a & mask) | bits;
#endif
}

// The in-place decode (GEMV kernel): value j of a block is masked where it sits in its word, after at most a
// shift by 16 bits that the word's upper values share, and ORed into the mantissa of 2^23, which gives
// 2^23 + q 2^p with p = inplace_position(j): one LOP3 and one FADD (minus 2^23) yield q 2^p exactly, and x staged
// times 2^-p turns the FFMA into x q. A 3-bit value that straddles two words is assembled at p = 0.
template <int BITS>
__host__ __device__ constexpr int inplace_position(int j) {
  return core::straddles(j, BITS) ? 0
         : core::shift_of(j, BITS) + BITS <= 23 ? core::shift_of(j, BITS)
                                                : core::shift_of(j, BITS) - 16;
}
template <int BITS>
__device__ __forceinline__ float inplace_value(const uint32_t (&w)[BITS], int j) {
  const int word = core::word_of(j, BITS), shift = core::shift_of(j, BITS);
  uint32_t bits;
  if (core::straddles(j, BITS)) {
    bits = core::extract_from_words<BITS>(w, j) | kMagicBits;
  } else if (shift + BITS <= 23) {
    bits = and_or(w[word], core::value_mask(BITS) << shift, kMagicBits);
  } else {
    bits = and_or(w[word] >> 16, core::value_mask(BITS) << (shift - 16), kMagicBits);
  }
  return __uint_as_float(bits) - kMagicFloat;
}
// 2^e for |e| < 127, exactly.
__device__ __forceinline__ float exp2_int(int e) { return __uint_as_float(static_cast<uint32_t>(127 + e) << 23); }

// Value j of a block whose words are w[0..BITS): see core::extract_from_words (checked on the CPU at compile
// time in core/bitpack_checks.cpp).
template <int BITS>
__device__ __forceinline__ uint32_t decode(const uint32_t (&w)[BITS], int j) {
  return core::extract_from_words<BITS>(w, j);
}

}  // namespace cuda
}  // namespace gptq_kernels
