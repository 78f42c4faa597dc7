// Hopper's warpgroup matrix multiply (wgmma, sm_90a) and what goes with it: shared-memory matrix descriptors for
// the 128-byte swizzled layout, the fences and the commit / wait of asynchronous groups. Used by
// gemm_wgmma_kernel.cuh only. The instructions exist on the sm_90a target alone; built for any other target
// these helpers trap, and plan_gemm never picks the kernel there (gemm_wgmma.cuh, kWgmmaBuilt). Under
// GPTQ_KERNELS_EMULATION they go to the CPU emulator of tests/emulation, which models the operand layouts and
// the asynchrony (a wgmma reads its registers and shared memory as late as its wait allows, or at issue).
#pragma once
#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GPTQ_KERNELS_WGMMA_DEVICE 1
#endif

namespace gptq_kernels {
namespace cuda {

// B operand layout ("K-major, 128-byte swizzle"): each row of B (one row of x) holds 64 values of K in 128 bytes,
// eight rows form a 1024-byte atom, and the 16-byte piece c of row r sits at piece c ^ (r % 8) of the row (the
// XOR of address bits 4-6 with bits 7-9, which the hardware applies to the shared address itself, hence atoms
// aligned to 1024 bytes). A wgmma's k16 slice s of the 64 values starts 32 s bytes into the atom.
constexpr int kSwizzleRowBytes = 128;
constexpr int kSwizzleAtomBytes = 8 * kSwizzleRowBytes;

// Byte offset of 16-byte piece `piece` (0-7) of row `row` in a tile of swizzled rows starting on an atom.
__host__ __device__ constexpr uint32_t swizzled_piece_offset(int row, int piece) {
  return static_cast<uint32_t>(row) * kSwizzleRowBytes + static_cast<uint32_t>((piece ^ (row % 8)) * 16);
}

// The shared-memory window address of a pointer into shared memory (what descriptors and the swizzle see).
__device__ __forceinline__ uint32_t shared_address(const void* p) {
#ifdef GPTQ_KERNELS_EMULATION
  return ::gptq_emulation::shared_address(p);
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// Descriptor of a K-major, 128-byte swizzled operand starting at shared address `address` (an atom boundary plus
// the k16 slice's 32 s bytes): start address, leading byte offset (unused by this layout, 1 by convention),
// stride byte offset 1024 (from one group of eight rows to the next) and the swizzle mode, all in 16-byte units.
__device__ __forceinline__ uint64_t swizzled_k_major_descriptor(uint32_t address) {
  return static_cast<uint64_t>((address & 0x3ffffu) >> 4) | (uint64_t{1} << 16) |
         (static_cast<uint64_t>(kSwizzleAtomBytes >> 4) << 32) | (uint64_t{1} << 62);
}

// Orders the warpgroup's register writes before the wgmma that reads them (and accumulator accesses around it).
__device__ __forceinline__ void wgmma_fence() {
#if defined(GPTQ_KERNELS_WGMMA_DEVICE)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#elif defined(GPTQ_KERNELS_EMULATION)
  ::gptq_emulation::wgmma_fence();
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// Closes the group of wgmmas issued since the last commit.
__device__ __forceinline__ void wgmma_commit() {
#if defined(GPTQ_KERNELS_WGMMA_DEVICE)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#elif defined(GPTQ_KERNELS_EMULATION)
  ::gptq_emulation::wgmma_commit_group();
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// Waits until at most N committed groups are still running: their accumulators and operands are then free.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if defined(GPTQ_KERNELS_WGMMA_DEVICE)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#elif defined(GPTQ_KERNELS_EMULATION)
  ::gptq_emulation::wgmma_wait_group(N);
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// Makes this thread's completed generic-proxy writes to shared memory (stores, cp.async) visible to the async
// proxy that wgmma reads shared memory through; each writing thread fences before the barrier.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// An empty asm that "modifies" a register, so that the compiler keeps its reads and writes on their side of the
// wgmma fences and waits (the asm statements themselves stay in order). Every input of a wgmma (A fragments,
// descriptors) must be final before the fence: ptxas serializes the wgmmas (warning C7513) when an ordinary
// instruction defines one between the fence and the wait.
__device__ __forceinline__ void fence_operand(float& r) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+f"(r)::"memory");
#endif
}
__device__ __forceinline__ void fence_operand(uint32_t& r) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+r"(r)::"memory");
#endif
}
__device__ __forceinline__ void fence_operand(uint64_t& r) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+l"(r)::"memory");
#endif
}

// d (64 x N, fp32) += A (64 x 16, registers) B (16 x N, shared memory at desc), for the whole warpgroup. A: warp
// w of the warpgroup holds rows 16 w.. in the layout of an m16n8k16 A fragment (mma_ops.cuh). d: warp w, lane
// (g, t) holds d[4 i + 2 h + e] = row 16 w + g + 8 h, column 8 i + 2 t + e. Asynchronous: a, d and the shared
// tile must stay untouched until a wgmma_wait covers the group.
// clang-format off
#define GPTQ_WGMMA_M64N64K16(TYPE, d, a, desc)                                                                   \
  asm volatile(                                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                               \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {"                                           \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                   \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                           \
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                                           \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),          \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),    \
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])   \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))

#define GPTQ_WGMMA_M64N128K16(TYPE, d, a, desc)                                                                  \
  asm volatile(                                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                               \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {"                                          \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                   \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                         \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                         \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"                           \
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                                           \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),          \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),    \
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),  \
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),  \
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),  \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),  \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])   \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1))
// clang-format on

template <typename T>
struct WgmmaOps {
  static constexpr bool kHalf = std::is_same<T, __half>::value;  // else bf16

  template <int N>
  static __device__ __forceinline__ void mma(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc) {
    static_assert(N == 64 || N == 128, "the kernel uses n64 and n128");
#if defined(GPTQ_KERNELS_WGMMA_DEVICE)
    if constexpr (kHalf && N == 64) {
      GPTQ_WGMMA_M64N64K16("f16", d, a, desc);
    } else if constexpr (kHalf) {
      GPTQ_WGMMA_M64N128K16("f16", d, a, desc);
    } else if constexpr (N == 64) {
      GPTQ_WGMMA_M64N64K16("bf16", d, a, desc);
    } else {
      GPTQ_WGMMA_M64N128K16("bf16", d, a, desc);
    }
#elif defined(GPTQ_KERNELS_EMULATION)
    ::gptq_emulation::wgmma_m64nNk16(kHalf ? ::gptq_emulation::MmaType::kHalf : ::gptq_emulation::MmaType::kBFloat16,
                                     N, d, a, desc);
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
  }
};

}  // namespace cuda
}  // namespace gptq_kernels
