// Kernels of csrc/cuda/layout.cuh (pack, unpack, permute_rows, dequantize), one template per bit width so every shift and
// word index below is a compile-time constant.
#include "cuda/layout.cuh"

namespace gptq_kernels {
namespace cuda {
namespace {

dim3 layout_grid(int64_t k, int64_t n) {
  const int64_t blocks = k / core::kBlockValues;
  return dim3(static_cast<unsigned>((n + kLayoutThreads - 1) / kLayoutThreads),
              static_cast<unsigned>(blocks < kLayoutMaxGridBlocks ? blocks : kLayoutMaxGridBlocks));
}

template <int BITS, typename Out>
__global__ void __launch_bounds__(kLayoutThreads) dequantize_kernel(const DequantParams p, Out* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kLayoutThreads + threadIdx.x;
  if (n >= p.n) return;
  const int64_t kblocks = p.k / core::kBlockValues;
  for (int64_t b = blockIdx.y; b < kblocks; b += gridDim.y) {
    uint32_t w[BITS];
#pragma unroll
    for (int i = 0; i < BITS; ++i) w[i] = __ldg(p.qweight + (b * BITS + i) * p.n + n);
    int current_group = -1;
    float scale = 0.f, zero = 0.f;  // zero holds kMagicFloat + zero point
#pragma unroll
    for (int j = 0; j < core::kBlockValues; ++j) {
      const int64_t k = b * core::kBlockValues + (p.fragment_order ? core::fragment_row(j) : j);
      // The group lookup is a broadcast load (one g_idx entry per warp); scale and zero are re-read only
      // when the group changes, which for sorted g_idx is at most once or twice per block.
      const int g = group_at(p.g_idx, k, p.group_size, p.groups);
      if (g != current_group) {
        current_group = g;
        scale = load_float(p.scales, static_cast<int64_t>(g) * p.n + n, p.scale_type);
        zero = magic_zero<BITS>(p.qzeros, g, p.n, n);
      }
      // (q - zero) is exact, and so is its product with an fp16/bf16 scale in fp32: one rounding, to Out.
      out[k * p.n + n] = FloatConvert<Out>::from_float((magic_float(decode<BITS>(w, j)) - zero) * scale);
    }
  }
}

template <int BITS>
__global__ void __launch_bounds__(kLayoutThreads)
    pack_kernel(const int32_t* __restrict__ values, uint32_t* __restrict__ packed, int64_t k, int64_t n) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kLayoutThreads + threadIdx.x;
  if (col >= n) return;
  for (int64_t b = blockIdx.y; b < k / core::kBlockValues; b += gridDim.y) {
    uint32_t w[BITS] = {};
#pragma unroll
    for (int j = 0; j < core::kBlockValues; ++j) {
      const uint32_t v = static_cast<uint32_t>(__ldg(values + (b * core::kBlockValues + j) * n + col));
      core::insert(w, 1, j, BITS, v);
    }
#pragma unroll
    for (int i = 0; i < BITS; ++i) packed[(b * BITS + i) * n + col] = w[i];
  }
}

template <int BITS>
__global__ void __launch_bounds__(kLayoutThreads)
    unpack_kernel(const uint32_t* __restrict__ packed, int32_t* __restrict__ values, int64_t k, int64_t n) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kLayoutThreads + threadIdx.x;
  if (col >= n) return;
  for (int64_t b = blockIdx.y; b < k / core::kBlockValues; b += gridDim.y) {
    uint32_t w[BITS];
#pragma unroll
    for (int i = 0; i < BITS; ++i) w[i] = __ldg(packed + (b * BITS + i) * n + col);
#pragma unroll
    for (int j = 0; j < core::kBlockValues; ++j) {
      values[(b * core::kBlockValues + j) * n + col] = static_cast<int32_t>(decode<BITS>(w, j));
    }
  }
}

// One thread per (32-row block, column): its 32 source values come from 32 scattered rows, but consecutive
// threads read consecutive columns of the same row, so every load is coalesced across the warp.
template <int BITS>
__global__ void __launch_bounds__(kLayoutThreads)
    permute_rows_kernel(const uint32_t* __restrict__ packed, const int64_t* __restrict__ perm,
                        uint32_t* __restrict__ out, int64_t k, int64_t n) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kLayoutThreads + threadIdx.x;
  if (col >= n) return;
  for (int64_t b = blockIdx.y; b < k / core::kBlockValues; b += gridDim.y) {
    uint32_t w[BITS];
    core::gather_block(packed + col, n, k, perm + b * core::kBlockValues, BITS, w);
#pragma unroll
    for (int i = 0; i < BITS; ++i) out[(b * BITS + i) * n + col] = w[i];
  }
}

template <int BITS>
void launch_dequantize_bits(const DequantParams& p, FloatType out_type, void* out, cudaStream_t stream) {
  const dim3 grid = layout_grid(p.k, p.n);
  switch (out_type) {
    case FloatType::kHalf:
      GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, dequantize_kernel<BITS, __half>)(p, static_cast<__half*>(out));
      break;
    case FloatType::kBFloat16:
      GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, dequantize_kernel<BITS, __nv_bfloat16>)(
          p, static_cast<__nv_bfloat16*>(out));
      break;
    default:
      GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, dequantize_kernel<BITS, float>)(p, static_cast<float*>(out));
  }
}

}  // namespace

void launch_dequantize(const DequantParams& p, int bits, FloatType out_type, void* out, cudaStream_t stream) {
  switch (bits) {
    case 2: launch_dequantize_bits<2>(p, out_type, out, stream); break;
    case 3: launch_dequantize_bits<3>(p, out_type, out, stream); break;
    case 4: launch_dequantize_bits<4>(p, out_type, out, stream); break;
    default: launch_dequantize_bits<8>(p, out_type, out, stream);
  }
}

void launch_pack(const int32_t* values, uint32_t* packed, int64_t k, int64_t n, int bits, cudaStream_t stream) {
  const dim3 grid = layout_grid(k, n);
  switch (bits) {
    case 2: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, pack_kernel<2>)(values, packed, k, n); break;
    case 3: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, pack_kernel<3>)(values, packed, k, n); break;
    case 4: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, pack_kernel<4>)(values, packed, k, n); break;
    default: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, pack_kernel<8>)(values, packed, k, n);
  }
}

void launch_unpack(const uint32_t* packed, int32_t* values, int64_t k, int64_t n, int bits, cudaStream_t stream) {
  const dim3 grid = layout_grid(k, n);
  switch (bits) {
    case 2: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, unpack_kernel<2>)(packed, values, k, n); break;
    case 3: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, unpack_kernel<3>)(packed, values, k, n); break;
    case 4: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, unpack_kernel<4>)(packed, values, k, n); break;
    default: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, unpack_kernel<8>)(packed, values, k, n);
  }
}

void launch_permute_rows(const uint32_t* packed, const int64_t* perm, uint32_t* out, int64_t k, int64_t n, int bits,
                         cudaStream_t stream) {
  const dim3 grid = layout_grid(k, n);
  switch (bits) {
    case 2: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, permute_rows_kernel<2>)(packed, perm, out, k, n); break;
    case 3: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, permute_rows_kernel<3>)(packed, perm, out, k, n); break;
    case 4: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, permute_rows_kernel<4>)(packed, perm, out, k, n); break;
    default: GPTQ_LAUNCH(grid, kLayoutThreads, 0, stream, permute_rows_kernel<8>)(packed, perm, out, k, n);
  }
}

}  // namespace cuda
}  // namespace gptq_kernels
