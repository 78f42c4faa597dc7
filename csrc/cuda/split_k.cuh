// Split-K, shared by the fused GPTQ kernels (gemm_fused.cu) and the BCQ lookup-table kernel (bcq_fused.cu): how
// far to split K over CTAs, and the second pass, y = sum over splits of the fp32 partial sums (+ bias), added in a
// fixed order so that the result does not depend on timing (no atomics).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

// Cap on the fp32 split-K partial sums [splits, M, N]: small enough to stay in L2 between the two kernels.
constexpr int64_t kMaxSplitkWorkspaceBytes = int64_t{8} << 20;

struct SplitK {
  int64_t splits;          // CTAs along K (grid.z)
  int64_t blocks_per_cta;  // 32-row blocks of K per CTA, a multiple of block_multiple
};

// Splits the kblocks 32-row blocks of K until output_tiles x splits CTAs make about ctas_per_sm per SM, giving each
// CTA at least min_blocks_per_cta blocks and keeping the workspace under kMaxSplitkWorkspaceBytes. No CTA is left
// without work.
inline SplitK choose_split_k(int64_t output_tiles, int64_t kblocks, int64_t m, int64_t n, int64_t sms,
                             int64_t ctas_per_sm, int64_t min_blocks_per_cta, int64_t block_multiple) {
  int64_t splits = std::max<int64_t>(1, (sms * ctas_per_sm + output_tiles - 1) / output_tiles);
  splits = std::min(splits, std::max<int64_t>(1, kblocks / min_blocks_per_cta));
  splits = std::min(splits, std::max<int64_t>(1, kMaxSplitkWorkspaceBytes / (m * n * 4)));
  int64_t blocks_per_cta = (kblocks + splits - 1) / splits;
  blocks_per_cta = (blocks_per_cta + block_multiple - 1) / block_multiple * block_multiple;
  return {(kblocks + blocks_per_cta - 1) / blocks_per_cta, blocks_per_cta};
}

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
