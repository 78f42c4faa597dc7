// The fused paths of the CUDA `gemm` (gemm_plan.cuh): choosing kernel, grid and K split, and launching them.
#include <algorithm>
#include <cstdint>

#include "core/bitpack.h"
#include "cuda/gemm_mma.cuh"
#include "cuda/gemm_plan.cuh"
#include "cuda/gemv.cuh"
#include "cuda/splitk_reduce.cuh"

namespace gptq_kernels {
namespace cuda {
namespace {

// With the tensor-core kernel off, up to 32 rows take the GEMV kernel: its 4 row tiles of 8 rows are grid
// neighbours that re-read each weight tile at about the same time, so the extra reads mostly hit L2.
constexpr int64_t kGemvMaxRows = 32;
// Up to this many rows the tensor-core kernel beats dequantize + cuBLAS (it reads the packed weight once per 64
// rows; cuBLAS reads an fp16 copy that first has to be written). To be tuned with benchmarks/bench_cuda.py.
constexpr int64_t kMmaMaxRows = 256;
// Split-K aims for this many CTAs per SM: GEMV, 4 x 128 threads x ~128 bytes of loads in flight each; the
// tensor-core kernel, whose CTAs hold up to 61 KB of shared memory, 3.
constexpr int64_t kGemvCtasPerSm = 4;
constexpr int64_t kMmaCtasPerSm = 3;
// Each CTA gets at least this many 32-row blocks of K, so its fixed costs (x staging and the cross-warp
// reduction; the tensor-core kernel's pipeline fill) stay small next to the weight stream.
constexpr int64_t kGemvMinBlocksPerCta = 8;
constexpr int64_t kMmaMinBlocksPerCta = 16;
// Cap on the fp32 split-K partial sums [splits, M, N]: small enough to stay in L2 between the two kernels.
constexpr int64_t kMaxWorkspaceBytes = int64_t{8} << 20;

// Splits K until the grid has about ctas_per_sm CTAs per SM, within the limits above; sets plan.splits,
// plan.blocks_per_cta (a multiple of block_multiple) and grid.z. No CTA is left without work.
void split_k(GemmPlan& plan, const GemmProblem& problem, int64_t ctas_per_sm, int64_t min_blocks_per_cta,
             int64_t block_multiple) {
  const int64_t output_tiles = static_cast<int64_t>(plan.grid.x) * plan.grid.y;
  const int64_t kblocks = problem.k / core::kBlockValues;
  int64_t splits = std::max<int64_t>(1, (problem.sms * ctas_per_sm + output_tiles - 1) / output_tiles);
  splits = std::min(splits, std::max<int64_t>(1, kblocks / min_blocks_per_cta));
  splits = std::min(splits, std::max<int64_t>(1, kMaxWorkspaceBytes / (problem.m * problem.n * 4)));
  int64_t blocks_per_cta = (kblocks + splits - 1) / splits;
  blocks_per_cta = (blocks_per_cta + block_multiple - 1) / block_multiple * block_multiple;
  plan.blocks_per_cta = blocks_per_cta;
  plan.splits = (kblocks + blocks_per_cta - 1) / blocks_per_cta;
  plan.grid.z = static_cast<unsigned>(plan.splits);
}

void launch_gemv_bits(int bits, const FusedGemmParams& p, ActType type, int rows_per_cta, dim3 grid,
                      cudaStream_t stream) {
  switch (bits) {
    case 2: launch_gemv<2>(p, type, rows_per_cta, grid, stream); break;
    case 3: launch_gemv<3>(p, type, rows_per_cta, grid, stream); break;
    case 4: launch_gemv<4>(p, type, rows_per_cta, grid, stream); break;
    default: launch_gemv<8>(p, type, rows_per_cta, grid, stream);
  }
}

cudaError_t launch_mma_bits(int bits, const FusedGemmParams& p, ActType type, int mt, dim3 grid, cudaStream_t stream) {
  switch (bits) {
    case 2: return launch_mma<2>(p, type, mt, grid, stream);
    case 3: return launch_mma<3>(p, type, mt, grid, stream);
    case 4: return launch_mma<4>(p, type, mt, grid, stream);
    default: return launch_mma<8>(p, type, mt, grid, stream);
  }
}

}  // namespace

GemmPlan plan_gemm(const GemmProblem& problem) {
  GemmPlan plan{};
  plan.path = GemmPath::kDequantizeThenGemm;
  plan.splits = 1;
  const int64_t m = problem.m;
  if (!problem.half_activations || !problem.weight_aligned || m < 1) return plan;
  const bool mma = problem.mma_available && problem.x_aligned;
  const int64_t mma_min_rows = std::min<int64_t>(std::max<int64_t>(problem.mma_min_rows, 1), kGemvMaxRowsPerCta + 1);
  if (mma ? m < mma_min_rows : m <= kGemvMaxRows) {
    plan.path = GemmPath::kGemv;
    plan.rows_per_cta = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : kGemvMaxRowsPerCta;
    plan.grid = dim3(static_cast<unsigned>((m + plan.rows_per_cta - 1) / plan.rows_per_cta),
                     static_cast<unsigned>((problem.n + kGemvColumns - 1) / kGemvColumns));
    split_k(plan, problem, kGemvCtasPerSm, kGemvMinBlocksPerCta, 1);
  } else if (mma && m <= kMmaMaxRows) {
    plan.path = GemmPath::kMma;
    plan.mma_tiles = m <= 16 ? 1 : m <= 32 ? 2 : 4;
    plan.grid = dim3(static_cast<unsigned>((m + 16 * plan.mma_tiles - 1) / (16 * plan.mma_tiles)),
                     static_cast<unsigned>((problem.n + kMmaColumns - 1) / kMmaColumns));
    split_k(plan, problem, kMmaCtasPerSm, kMmaMinBlocksPerCta, kMmaTileBlocks);
  }
  return plan;
}

cudaError_t launch_fused_gemm(const GemmPlan& plan, int bits, const FusedGemmParams& p, ActType type,
                              cudaStream_t stream) {
  if (plan.path == GemmPath::kGemv) {
    launch_gemv_bits(bits, p, type, plan.rows_per_cta, plan.grid, stream);
  } else {
    const cudaError_t error = launch_mma_bits(bits, p, type, plan.mma_tiles, plan.grid, stream);
    if (error != cudaSuccess) return error;
  }
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess || plan.splits == 1) return error;
  launch_splitk_reduce(p.workspace, plan.splits, p.m, p.n, p.bias, p.bias_type,
                       type == ActType::kHalf ? FloatType::kHalf : FloatType::kBFloat16, p.y, stream);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gptq_kernels
