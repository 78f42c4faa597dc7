// The body of the tensor-core kernel (see gemm_mma.cuh for the design) and its launcher. Include only from the
// gemm_mma_<bits>bit.cu files that instantiate it.
#pragma once
#include <cstring>
#include <type_traits>

#include "cuda/gemm_mma.cuh"

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

// The paired decode (dequantize_block_pairs) per activation type: OR-ing q into the mantissa of the magic number
// gives magic + q exactly while q < 2^kMagicMaxBits (fp16: 0x6400 | q is 1024 + q; bf16, 7 mantissa bits:
// 0x4300 | q is 128 + q, so 2- and 4-bit weights only).
template <typename T>
struct PairedDecode {
  static constexpr bool kHalf = std::is_same<T, __half>::value;  // else bf16
  using Pair = std::conditional_t<kHalf, __half2, __nv_bfloat162>;
  static constexpr FloatType kType = kHalf ? FloatType::kHalf : FloatType::kBFloat16;
  static constexpr uint32_t kMagicPair = kHalf ? 0x64006400u : 0x43004300u;
  static constexpr float kMagicValue = kHalf ? 1024.f : 128.f;
  static constexpr int kMagicMaxBits = kHalf ? 10 : 7;
};

// (h - zm) * s on both halves of a register pair of T: the difference of two magic numbers is exact, the product
// rounded once.
template <typename T>
__device__ __forceinline__ uint32_t sub_mul_pair(uint32_t h, uint32_t zm, uint32_t s) {
  using Pair = typename PairedDecode<T>::Pair;
  Pair a, b, c;  // (void* destinations: the pair types have user-defined assignment, but are plain bits)
  memcpy(static_cast<void*>(&a), &h, 4);
  memcpy(static_cast<void*>(&b), &zm, 4);
  memcpy(static_cast<void*>(&c), &s, 4);
  const Pair r = __hmul2(__hsub2(a, b), c);
  uint32_t out;
  memcpy(&out, &r, 4);
  return out;
}

// Whether the 32 values of a block can be dequantized two at a time (dequantize_block_pairs): the values and
// zero points must fit the magic number's mantissa (8-bit weights need fp16), and 3-bit values straddle words.
template <typename T, int BITS>
constexpr bool kPairedDecode = (BITS == 2 || BITS == 4 || BITS == 8) && BITS < PairedDecode<T>::kMagicMaxBits;

// Dequantizes the 32 values of one block (its words w) to T, two per instruction: OR-ing two values into the
// mantissas of a pair of magic numbers gives (magic + q) in both halves, subtracting zero_pair (magic + zero in
// both halves) is exact, and the product with scale_pair (the group's scale, a T already) is rounded once: bit for
// bit the values of the fp32 path (scale * (q - zero) rounded once). A 4-bit word yields the pairs (j, j + 4), a
// 2-bit word (j, j + 8); one byte permute per pair regroups them into neighbours. 8-bit bytes land in
// neighbouring halves directly. out[i] holds values 2i (low half) and 2i + 1.
template <typename T, int BITS>
__device__ __forceinline__ void dequantize_block_pairs(const uint32_t (&w)[BITS], uint32_t zero_pair,
                                                       uint32_t scale_pair, uint32_t (&out)[16]) {
  using Traits = PairedDecode<T>;
  if constexpr (BITS == 8) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {  // word i: values 4i..4i+3, one per byte
      out[2 * i] = sub_mul_pair<T>(__byte_perm(w[i], Traits::kMagicPair, 0x5150), zero_pair, scale_pair);
      out[2 * i + 1] = sub_mul_pair<T>(__byte_perm(w[i], Traits::kMagicPair, 0x5352), zero_pair, scale_pair);
    }
  } else {
    constexpr int kPerWord = 32 / BITS;      // values per word: 8 (4-bit) or 16 (2-bit)
    constexpr int kHalfSpan = kPerWord / 2;  // one extraction yields values s and s + kHalfSpan
    constexpr uint32_t kMask = ((1u << BITS) - 1u) * 0x00010001u;
#pragma unroll
    for (int i = 0; i < BITS; ++i) {
      uint32_t d[kHalfSpan];
#pragma unroll
      for (int sft = 0; sft < kHalfSpan; ++sft) {
        d[sft] = sub_mul_pair<T>(((w[i] >> (sft * BITS)) & kMask) | Traits::kMagicPair, zero_pair, scale_pair);
      }
#pragma unroll
      for (int r = 0; r < kHalfSpan / 2; ++r) {
        out[i * kHalfSpan + r] = __byte_perm(d[2 * r], d[2 * r + 1], 0x5410);                   // low halves
        out[i * kHalfSpan + kHalfSpan / 2 + r] = __byte_perm(d[2 * r], d[2 * r + 1], 0x7632);  // high halves
      }
    }
  }
}

template <typename T, int BITS, int MT>
__global__ void __launch_bounds__(kMmaThreads) gemm_mma_kernel(const FusedGemmParams p) {
  constexpr int BM = 16 * MT;
  constexpr int kPackedRows = kMmaTileBlocks * BITS;          // packed words per column per K tile
  constexpr int kXStageElems = BM * kMmaRowStride;             // x tile [BM][72]
  constexpr int kWStageWords = kPackedRows * kMmaColumns;      // packed tile [2 * BITS][64]
  constexpr int kXChunksPerRow = kMmaTileK * 2 / 16;           // 16-byte chunks per x tile row: 8
  constexpr int kWChunksPerRow = kMmaColumns * 4 / 16;         // 16-byte chunks per packed row: 16
  constexpr unsigned kFullMask = 0xffffffffu;
  static_assert(kMmaThreads == kMmaTileBlocks * kMmaColumns, "one thread dequantizes one block of one column");
  static_assert(kMmaWarps * 16 == kMmaColumns, "each warp owns 16 columns (two n8 tiles)");

  unsigned char* smem_raw = dynamic_shared_memory();
  T* xs = reinterpret_cast<T*>(smem_raw);                                     // [stages][BM][72]
  uint32_t* ws = reinterpret_cast<uint32_t*>(xs + kMmaStages * kXStageElems);  // [stages][2 * BITS][64]
  T* bs = reinterpret_cast<T*>(ws + kMmaStages * kWStageWords);                // W^T tile [64 columns][72]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int row0 = blockIdx.x * BM;
  const int n_tile = blockIdx.y * kMmaColumns;
  const int kblocks = p.k / core::kBlockValues;
  const int kb_begin = blockIdx.z * p.blocks_per_cta;
  const int kb_end = min(kb_begin + p.blocks_per_cta, kblocks);
  const int tiles = (kb_end - kb_begin + kMmaTileBlocks - 1) / kMmaTileBlocks;
  const T* x = static_cast<const T*>(p.x);

  // Issues the copies of K tile `tile` into stage `stage`. Rows of x past M, K past this CTA's range and
  // columns past N are zero-filled (nothing is read for them).
  auto load_tile = [&](int stage, int tile) {
    const int kb0 = kb_begin + tile * kMmaTileBlocks;
    T* x_dst = xs + stage * kXStageElems;
    for (int c = tid; c < BM * kXChunksPerRow; c += kMmaThreads) {
      const int r = c / kXChunksPerRow, kc = c % kXChunksPerRow;
      const int64_t k = static_cast<int64_t>(kb0) * core::kBlockValues + kc * 8;
      const bool valid = row0 + r < p.m && k < static_cast<int64_t>(kb_end) * core::kBlockValues;
      cp_async_16(x_dst + r * kMmaRowStride + kc * 8, valid ? x + (row0 + r) * p.ldx + k : x, valid);
    }
    uint32_t* w_dst = ws + stage * kWStageWords;
    for (int c = tid; c < kPackedRows * kWChunksPerRow; c += kMmaThreads) {
      const int r = c / kWChunksPerRow, nc = c % kWChunksPerRow;
      const int n = n_tile + nc * 4;
      const bool valid = n < p.n && kb0 + r / BITS < kb_end;
      cp_async_16(w_dst + r * kMmaColumns + nc * 4,
                  valid ? p.qweight + (static_cast<int64_t>(kb0) * BITS + r) * p.n + n : p.qweight, valid);
    }
  };

  // Thread tid dequantizes block dq_blk of the K tile for column dq_col: warps 0-1 take the first block, warps
  // 2-3 the second, so each warp's 32 rows share one group test.
  const int dq_col = tid % kMmaColumns, dq_blk = tid / kMmaColumns;
  const int dq_n = min(n_tile + dq_col, p.n - 1);  // columns past N use a valid column's scale; never written
  int current_group = -1;
  float scale = 0.f, zero = 0.f;  // zero holds kMagicFloat + zero point
  // The paired decode needs the scale exactly in T: scales stored in the activation dtype (the usual case).
  const bool paired_decode = kPairedDecode<T, BITS> && p.scale_type == PairedDecode<T>::kType;
  uint32_t zero_pair = 0u, scale_pair = 0u;  // magic + zero point and the scale, in both halves of a T pair
  auto dequantize_tile = [&](int stage, int tile) {
    const int b = kb_begin + tile * kMmaTileBlocks + dq_blk;
    T* dst = bs + dq_col * kMmaRowStride + dq_blk * core::kBlockValues;
    if (b >= kb_end) {  // warp-uniform. x is zero there, but stale W^T values could be Inf or NaN: write zeros
#pragma unroll
      for (int i = 0; i < 4; ++i) reinterpret_cast<uint4*>(dst)[i] = make_uint4(0u, 0u, 0u, 0u);
      return;
    }
    const uint32_t* src = ws + stage * kWStageWords + dq_blk * BITS * kMmaColumns + dq_col;
    const int lane_group = group_at(p.g_idx, static_cast<int64_t>(b) * core::kBlockValues + lane, p.group_size,
                                    p.groups);
    const int g = __shfl_sync(kFullMask, lane_group, 0);
    if (__all_sync(kFullMask, lane_group == g)) {
      if (g != current_group) {
        current_group = g;
        scale = load_float(p.scales, static_cast<int64_t>(g) * p.n + dq_n, p.scale_type);
        zero = magic_zero<BITS>(p.qzeros, g, p.n, dq_n);
        if (paired_decode) {
          zero_pair = MmaOps<T>::pack2(zero - kMagicFloat + PairedDecode<T>::kMagicValue,
                                       zero - kMagicFloat + PairedDecode<T>::kMagicValue);
          scale_pair = MmaOps<T>::pack2(scale, scale);
        }
      }
      uint32_t w[BITS];
#pragma unroll
      for (int i = 0; i < BITS; ++i) w[i] = src[i * kMmaColumns];
      if constexpr (kPairedDecode<T, BITS>) {
        if (paired_decode) {
          uint32_t out[16];
          dequantize_block_pairs<T, BITS>(w, zero_pair, scale_pair, out);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            reinterpret_cast<uint4*>(dst)[i] = make_uint4(out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3]);
          }
          return;
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        uint32_t packed[4];
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const int j = i * 8 + h * 2;
          packed[h] = MmaOps<T>::pack2((magic_float(decode<BITS>(w, j)) - zero) * scale,
                                       (magic_float(decode<BITS>(w, j + 1)) - zero) * scale);
        }
        reinterpret_cast<uint4*>(dst)[i] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
      }
    } else {
      // Rows of different groups (unsorted act-order g_idx, group sizes not a multiple of 32): look each up.
#pragma unroll 1
      for (int j = 0; j < core::kBlockValues; ++j) {
        const int gj = __shfl_sync(kFullMask, lane_group, j);
        const float s = load_float(p.scales, static_cast<int64_t>(gj) * p.n + dq_n, p.scale_type);
        const float z = magic_zero<BITS>(p.qzeros, gj, p.n, dq_n);
        dst[j] = FloatConvert<T>::from_float((magic_float(core::extract(src, kMmaColumns, j, BITS)) - z) * s);
      }
    }
  };

  float acc[MT][2][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;
    }
  }
  const int fg = lane / 4, ft = lane % 4;  // fragment coordinates (see MmaOps)
  auto mma_tile = [&](int stage) {
    const T* xa = xs + stage * kXStageElems;
    const T* wb = bs + warp * 16 * kMmaRowStride;
#pragma unroll
    for (int ks = 0; ks < kMmaTileK / 16; ++ks) {
      uint32_t b[2][2];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const T* bp = wb + (nt * 8 + fg) * kMmaRowStride + ks * 16 + 2 * ft;
        b[nt][0] = *reinterpret_cast<const uint32_t*>(bp);
        b[nt][1] = *reinterpret_cast<const uint32_t*>(bp + 8);
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const T* ap = xa + (mt * 16 + fg) * kMmaRowStride + ks * 16 + 2 * ft;
        const uint32_t a[4] = {*reinterpret_cast<const uint32_t*>(ap),
                               *reinterpret_cast<const uint32_t*>(ap + 8 * kMmaRowStride),
                               *reinterpret_cast<const uint32_t*>(ap + 8),
                               *reinterpret_cast<const uint32_t*>(ap + 8 * kMmaRowStride + 8)};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) MmaOps<T>::mma(acc[mt][nt], a, b[nt][0], b[nt][1]);
      }
    }
  };

  // Multistage pipeline: tile t + kMmaStages - 1 is requested while tile t is dequantized and multiplied. One
  // copy group is committed per iteration (empty near the end) so that wait_group counts stay uniform.
#pragma unroll
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < tiles) load_tile(s, s);
    cp_async_commit();
  }
  for (int tile = 0; tile < tiles; ++tile) {
    cp_async_wait<kMmaStages - 2>();  // this thread's copies of `tile` have landed
    // Everyone's copies of `tile` are visible, and every warp has finished the previous tile's mma: its stage
    // may be refilled and the W^T tile overwritten.
    __syncthreads();
    const int next = tile + kMmaStages - 1;
    if (next < tiles) load_tile(next % kMmaStages, next);
    cp_async_commit();
    dequantize_tile(tile % kMmaStages, tile);
    __syncthreads();  // the W^T tile is complete
    mma_tile(tile % kMmaStages);
  }
  cp_async_wait<0>();

  // Epilogue straight from the accumulators: two neighbouring columns per store.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = row0 + mt * 16 + fg + half * 8;
        const int n = n_tile + warp * 16 + nt * 8 + 2 * ft;  // even; N is a multiple of 32, so n + 1 < N too
        if (m >= p.m || n >= p.n) continue;
        float v0 = acc[mt][nt][2 * half], v1 = acc[mt][nt][2 * half + 1];
        if (gridDim.z == 1) {
          if (p.bias != nullptr) {
            v0 += load_float(p.bias, n, p.bias_type);
            v1 += load_float(p.bias, n + 1, p.bias_type);
          }
          *reinterpret_cast<uint32_t*>(static_cast<T*>(p.y) + static_cast<int64_t>(m) * p.n + n) =
              MmaOps<T>::pack2(v0, v1);
        } else {
          *reinterpret_cast<float2*>(p.workspace + (static_cast<int64_t>(blockIdx.z) * p.m + m) * p.n + n) =
              make_float2(v0, v1);
        }
      }
    }
  }
}

template <typename T, int BITS, int MT>
cudaError_t launch_mma_typed(const FusedGemmParams& p, dim3 grid, cudaStream_t stream) {
  constexpr size_t smem = mma_smem_bytes(BITS, MT);
  auto kernel = gemm_mma_kernel<T, BITS, MT>;
  // Above 48 KB of dynamic shared memory a kernel must opt in (a host-side attribute, no synchronisation).
  if (smem > 48 * 1024) {
    const cudaError_t error =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (error != cudaSuccess) return error;
  }
  GPTQ_LAUNCH(grid, kMmaThreads, smem, stream, kernel)(p);
  return cudaSuccess;
}

template <int BITS>
cudaError_t launch_mma(const FusedGemmParams& p, ActType type, int mt, dim3 grid, cudaStream_t stream) {
  if (type == ActType::kHalf) {
    switch (mt) {
      case 1: return launch_mma_typed<__half, BITS, 1>(p, grid, stream);
      case 2: return launch_mma_typed<__half, BITS, 2>(p, grid, stream);
      default: return launch_mma_typed<__half, BITS, 4>(p, grid, stream);
    }
  }
  switch (mt) {
    case 1: return launch_mma_typed<__nv_bfloat16, BITS, 1>(p, grid, stream);
    case 2: return launch_mma_typed<__nv_bfloat16, BITS, 2>(p, grid, stream);
    default: return launch_mma_typed<__nv_bfloat16, BITS, 4>(p, grid, stream);
  }
}

}  // namespace cuda
}  // namespace gptq_kernels
