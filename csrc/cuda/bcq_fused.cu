// The lookup-table path of the CUDA bcq_gemm (bcq.cuh): its plan (row tiles, K split) and its launches.
#include <algorithm>
#include <cstdint>

#include "cuda/bcq.cuh"
#include "cuda/split_k.cuh"

namespace gptq_kernels {
namespace cuda {
namespace {

// Split-K aims for this many CTAs per SM (4 warps each, ~100-128 bytes of plane words in flight per thread),
// and gives each CTA at least one stage of K, so that building its tables stays small next to the lookups.
constexpr int64_t kBcqCtasPerSm = 4;
constexpr int64_t kBcqMinBlocksPerCta = kBcqStageBlocks;

}  // namespace

BcqGemvPlan plan_bcq_gemv(int64_t m, int64_t k, int64_t n, int64_t sms) {
  BcqGemvPlan plan{};
  plan.rows_per_cta = m <= 1 ? 1 : m <= 2 ? 2 : kBcqMaxRowsPerCta;
  const int64_t row_tiles = (m + plan.rows_per_cta - 1) / plan.rows_per_cta;
  const int64_t col_tiles = (n + kBcqColumns - 1) / kBcqColumns;
  // Whole stages per CTA.
  const SplitK split = choose_split_k(row_tiles * col_tiles, k / core::kBlockValues, m, n, sms, kBcqCtasPerSm,
                                      kBcqMinBlocksPerCta, kBcqStageBlocks);
  plan.splits = split.splits;
  plan.blocks_per_cta = split.blocks_per_cta;
  plan.grid = dim3(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles),
                   static_cast<unsigned>(plan.splits));
  return plan;
}

cudaError_t launch_bcq_fused(const BcqGemvPlan& plan, int planes, const BcqGemvParams& p, FloatType x_type,
                             cudaStream_t stream) {
  if (planes == 2) {
    launch_bcq_gemv<2>(p, x_type, plan.rows_per_cta, plan.grid, stream);
  } else {
    launch_bcq_gemv<3>(p, x_type, plan.rows_per_cta, plan.grid, stream);
  }
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess || plan.splits == 1) return error;
  launch_splitk_reduce(p.workspace, plan.splits, p.m, p.n, p.bias, p.bias_type, x_type, p.y, stream);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptq_kernels
