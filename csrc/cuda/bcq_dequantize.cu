// The BCQ dequantize kernel (bcq.cuh): the bcq_dequantize op and the large-batch path of bcq_gemm
// (dequantize to the activation dtype, then cuBLAS). One thread owns one 32-input block of one output: it reads
// that block's plane words (consecutive threads = consecutive outputs, so every load and store is coalesced
// across the warp) and writes the block's 32 values. Runs once per call of the large-batch path, not per token.
#include "cuda/bcq.cuh"

namespace gptq_kernels {
namespace cuda {
namespace {

constexpr int kBcqDequantThreads = 128;       // outputs per CTA
constexpr int kBcqDequantMaxGridBlocks = 8192;  // CTAs along K; larger K is covered by a grid-stride loop

template <typename Out>
__global__ void __launch_bounds__(kBcqDequantThreads) bcq_dequantize_kernel(const BcqDequantParams p,
                                                                          Out* __restrict__ out) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kBcqDequantThreads + threadIdx.x;
  if (n >= p.n) return;
  const int64_t kblocks = p.k / core::kBlockValues;
  for (int64_t b = blockIdx.y; b < kblocks; b += gridDim.y) {
    uint32_t w[core::kBcqMaxPlanes];
#pragma unroll
    for (int i = 0; i < core::kBcqMaxPlanes; ++i) {
      w[i] = i < p.planes ? __ldg(p.qplanes + (i * kblocks + b) * p.n + n) : 0u;
    }
    int current_group = -1;
    float alpha[core::kBcqMaxPlanes] = {}, offset = 0.f;
#pragma unroll 4
    for (int j = 0; j < core::kBlockValues; ++j) {
      const int64_t k = b * core::kBlockValues + j;
      // Groups need not align to blocks here; alpha and offset are re-read only when the group changes.
      const int g = min(static_cast<int>(core::group_of(k, p.group_size)), p.groups - 1);
      if (g != current_group) {
        current_group = g;
#pragma unroll
        for (int i = 0; i < core::kBcqMaxPlanes; ++i) {
          if (i < p.planes) alpha[i] = load_float(p.alpha, (static_cast<int64_t>(g) * p.planes + i) * p.n + n, p.alpha_type);
        }
        offset = load_float(p.offset, static_cast<int64_t>(g) * p.n + n, p.offset_type);
      }
      // Planes first, then the offset, like bcq_format.dequantize; one rounding, to Out.
      float v = 0.f;
#pragma unroll
      for (int i = 0; i < core::kBcqMaxPlanes; ++i) {
        if (i < p.planes) v = fmaf(core::plane_sign(w[i], j), alpha[i], v);
      }
      out[k * p.n + n] = FloatConvert<Out>::from_float(v + offset);
    }
  }
}

}  // namespace

void launch_bcq_dequantize(const BcqDequantParams& p, FloatType out_type, void* out, cudaStream_t stream) {
  const int64_t kblocks = p.k / core::kBlockValues;
  const dim3 grid(static_cast<unsigned>((p.n + kBcqDequantThreads - 1) / kBcqDequantThreads),
                  static_cast<unsigned>(kblocks < kBcqDequantMaxGridBlocks ? kblocks : kBcqDequantMaxGridBlocks));
  switch (out_type) {
    case FloatType::kHalf:
      GPTQ_LAUNCH(grid, kBcqDequantThreads, 0, stream, bcq_dequantize_kernel<__half>)(p, static_cast<__half*>(out));
      break;
    case FloatType::kBFloat16:
      GPTQ_LAUNCH(grid, kBcqDequantThreads, 0, stream, bcq_dequantize_kernel<__nv_bfloat16>)(
          p, static_cast<__nv_bfloat16*>(out));
      break;
    default:
      GPTQ_LAUNCH(grid, kBcqDequantThreads, 0, stream, bcq_dequantize_kernel<float>)(p, static_cast<float*>(out));
  }
}

}  // namespace cuda
}  // namespace gptq_kernels
