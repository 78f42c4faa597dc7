// Tensor-core building blocks shared by the two kernels that use mma.sync (gemm_mma_kernel.cuh for 9-256 rows,
// gemv_tc_kernel.cuh for 1-8 rows): asynchronous copies, ldmatrix, the m16n8k16 mma itself, and the exact decode
// of packed values into fp16x2/bf16x2 fragment registers. Under GPTQ_KERNELS_EMULATION the PTX goes to the CPU
// emulator of tests/emulation instead.
#pragma once
#include <cstring>
#include <type_traits>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

// 16-byte asynchronous copy global -> shared; with valid == false it reads nothing and writes 16 zero bytes.
// Under GPTQ_KERNELS_EMULATION these three go to the CPU emulator (tests/emulation), which can land each copy
// as late as the wait allows, so a read of a stage before its wait shows up as a wrong result.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
#elif defined(GPTQ_KERNELS_EMULATION)
  ::gptq_emulation::cp_async(smem, gmem, 16, valid ? 16 : 0);
#endif
}
// 4-byte asynchronous copy (through L1), for copies that scatter pairs of 16-bit values; valid == false as above.
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
#elif defined(GPTQ_KERNELS_EMULATION)
  ::gptq_emulation::cp_async(smem, gmem, 4, valid ? 4 : 0);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#elif defined(GPTQ_KERNELS_EMULATION)
  ::gptq_emulation::cp_async_commit_group();
#endif
}
// Waits until at most N of this thread's most recent copy groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#elif defined(GPTQ_KERNELS_EMULATION)
  ::gptq_emulation::cp_async_wait_group(N);
#endif
}

// ldmatrix.x4: four 8x8 tiles of 16-bit elements from shared memory, the A fragment of one m16n8k16 when the
// tiles are its quadrants (lanes 8i..8i+7 give the row addresses of tile i; register i receives tile i).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#elif defined(GPTQ_KERNELS_EMULATION)
  ::gptq_emulation::ldmatrix_x4(r, row);
#endif
}

// D += A * B for one m16n8k16 tile, and packing two floats into the 32-bit register of a fragment.
// Fragment layouts (PTX ISA, "mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
//   A (16 x 16, row-major): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]
//   B (16 x 8, "col"):      b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   D (16 x 8):             d[0..1] = D[g][2t..2t+1], d[2..3] = D[g+8][2t..2t+1]
template <typename T>
struct MmaOps;
template <>
struct MmaOps<__half> {
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(GPTQ_KERNELS_EMULATION)
    ::gptq_emulation::mma_m16n8k16(::gptq_emulation::MmaType::kHalf, d, a, b0, b1);
#endif
  }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);  // lo in the low 16 bits
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};
template <>
struct MmaOps<__nv_bfloat16> {
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(GPTQ_KERNELS_EMULATION)
    ::gptq_emulation::mma_m16n8k16(::gptq_emulation::MmaType::kBFloat16, d, a, b0, b1);
#endif
  }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

// Packed values become T through magic numbers: ORed into the mantissa of 1024 (fp16) or 128 (bf16), a value
// q reads as magic + q, and one fused multiply-add per pair of values (magic_fma) leaves q - zero exactly.
template <typename T>
struct MagicPair {
  static constexpr bool kHalf = std::is_same<T, __half>::value;  // else bf16
  using Pair = std::conditional_t<kHalf, __half2, __nv_bfloat162>;
  // fp16 0x6400 | q = 1024 + q for q < 2^10; bf16 (7 mantissa bits) 0x4300 | q = 128 + q for q < 2^7.
  static constexpr uint32_t kBits = kHalf ? 0x64006400u : 0x43004300u;
  static constexpr float kValue = kHalf ? 1024.f : 128.f;
  static constexpr int kMantissaBits = kHalf ? 10 : 7;
};
// The sign bits of both halves of a pair (fp16 and bf16 alike): ORed into a positive pair, its negation.
constexpr uint32_t kSignBits = 0x80008000u;

// pair * multiplier + offset in T's paired type (HFMA2), on the raw bits of three registers.
template <typename T>
__device__ __forceinline__ uint32_t magic_fma(uint32_t pair, uint32_t multiplier, uint32_t offset) {
  using Pair = typename MagicPair<T>::Pair;
  Pair a, m, c;  // (void* destinations: the pair types have user-defined assignment, but are plain bits)
  memcpy(static_cast<void*>(&a), &pair, 4);
  memcpy(static_cast<void*>(&m), &multiplier, 4);
  memcpy(static_cast<void*>(&c), &offset, 4);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // No bf16x2 FMA before sm_80, where this kernel never runs (plan_gemm); the fp32 form keeps it compiling.
  Pair r;
  if constexpr (MagicPair<T>::kHalf) {
    const float2 fa = __half22float2(a), fm = __half22float2(m), fc = __half22float2(c);
    r = __floats2half2_rn(fmaf(fa.x, fm.x, fc.x), fmaf(fa.y, fm.y, fc.y));
  } else {
    const float2 fa = __bfloat1622float2(a), fm = __bfloat1622float2(m), fc = __bfloat1622float2(c);
    r = __floats2bfloat162_rn(fmaf(fa.x, fm.x, fc.x), fmaf(fa.y, fm.y, fc.y));
  }
#else
  const Pair r = __hfma2(a, m, c);
#endif
  uint32_t out;
  memcpy(&out, &r, 4);
  return out;
}

// The same decode for weights in fragment order (core/fragment_order.h), where lane t's eight values of a block
// and column sit in one word (4-bit: word t) or half word (2-bit: half t % 2 of word t / 2), pair p's low value
// at bit BITS p of the low half and its high value at the same bit of the high half. One load per block and
// column; per pair a mask and one fused multiply-add, and a shift every kPairsPerShift pairs: a shifted pair
// (values at bit BITS of each half) needs 2 BITS mantissa bits, which bf16 lacks at 4 bits.
template <typename T, int BITS>
struct FragmentOrderDecode {
  static_assert(core::has_fragment_order(BITS), "fragment order exists for 2- and 4-bit weights only");
  using Magic = MagicPair<T>;
  static constexpr int kPairsPerShift = 2 * BITS <= Magic::kMantissaBits ? 2 : 1;
  static constexpr int kHighShift = kPairsPerShift == 2 ? BITS : 0;  // where odd pairs sit (their multiplier)

  uint32_t selector;  // 2-bit: bytes 2 (t % 2) and 2 (t % 2) + 1 of the word into bytes 0 and 2

  __device__ __forceinline__ explicit FragmentOrderDecode(int lane_t)
      : selector(lane_t % 2 ? 0x4342u : 0x4140u) {}

  // Word of the block, among its BITS words, that holds lane t's values.
  static __device__ __forceinline__ int lane_word(int lane_t) { return BITS == 4 ? lane_t : lane_t / 2; }

  // Lane t's values with pair p's low value at bits BITS p and its high value at bits 16 + BITS p.
  __device__ __forceinline__ uint32_t lane_values(uint32_t word) const {
    if constexpr (BITS == 4) return word;
    return __byte_perm(word, 0u, selector);
  }

  // q - zero of pair P, exactly, in T. Pairs at bit 0 of their halves take multiplier[0] = (1, 1) and offset[0]
  // = -(magic + zero) in both halves; pairs at bit kHighShift take multiplier[1] and offset[1], scaled by
  // 2^-kHighShift as in FragmentDecode.
  template <int P>
  __device__ __forceinline__ uint32_t decode(uint32_t lane, const uint32_t (&multiplier)[2],
                                             const uint32_t (&offset)[2]) const {
    constexpr int kOdd = P % kPairsPerShift;
    constexpr uint32_t kMask = (core::value_mask(BITS) * 0x10001u) << (BITS * kOdd);
    const uint32_t h = and_or(lane >> (BITS * (P - kOdd)), kMask, Magic::kBits);
    return magic_fma<T>(h, multiplier[kOdd], offset[kOdd]);
  }
};

}  // namespace cuda
}  // namespace gptq_kernels
