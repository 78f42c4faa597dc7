// The second pass of split-K, shared by the fused GPTQ kernels (gemm_fused.cu) and the BCQ lookup-table kernel
// (bcq_fused.cu): y = sum over splits of the fp32 partial sums (+ bias), added in a fixed order so that the
// result does not depend on timing (no atomics).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

constexpr int kSplitkReduceThreads = 256;

// y[i] = sum over s of workspace[s, i] (+ bias[i % n]) for the mn elements of y, in a grid-stride loop.
template <typename T>
__global__ void __launch_bounds__(kSplitkReduceThreads)
    splitk_reduce_kernel(const float* __restrict__ workspace, int splits, int64_t mn, int64_t n, const void* bias,
                         FloatType bias_type, T* __restrict__ y) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kSplitkReduceThreads + threadIdx.x; i < mn;
       i += static_cast<int64_t>(gridDim.x) * kSplitkReduceThreads) {
    float v = 0.f;
    for (int s = 0; s < splits; ++s) v += workspace[s * mn + i];
    if (bias != nullptr) v += load_float(bias, i % n, bias_type);
    y[i] = FloatConvert<T>::from_float(v);
  }
}

// workspace [splits, m, n] -> y [m, n] of y_type. At most 1024 CTAs: plenty for an element-wise sum whose input
// sits in L2. The caller checks the launch.
inline void launch_splitk_reduce(const float* workspace, int64_t splits, int64_t m, int64_t n, const void* bias,
                                 FloatType bias_type, FloatType y_type, void* y, cudaStream_t stream) {
  const int64_t mn = m * n;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((mn + kSplitkReduceThreads - 1) / kSplitkReduceThreads, 1024));
  const int s = static_cast<int>(splits);
  switch (y_type) {
    case FloatType::kHalf:
      GPTQ_LAUNCH(blocks, kSplitkReduceThreads, 0, stream, splitk_reduce_kernel<__half>)(
          workspace, s, mn, n, bias, bias_type, static_cast<__half*>(y));
      break;
    case FloatType::kBFloat16:
      GPTQ_LAUNCH(blocks, kSplitkReduceThreads, 0, stream, splitk_reduce_kernel<__nv_bfloat16>)(
          workspace, s, mn, n, bias, bias_type, static_cast<__nv_bfloat16*>(y));
      break;
    default:
      GPTQ_LAUNCH(blocks, kSplitkReduceThreads, 0, stream, splitk_reduce_kernel<float>)(
          workspace, s, mn, n, bias, bias_type, static_cast<float*>(y));
  }
}

}  // namespace cuda
}  // namespace gptq_kernels
