// The fused paths of the CUDA `gemm` (gemm_plan.cuh): choosing kernel, grid and K split, and launching them.
#include <algorithm>
#include <cstdint>

#include "core/bitpack.h"
#include "cuda/gemm_mma.cuh"
#include "cuda/gemm_plan.cuh"
#include "cuda/gemm_wgmma.cuh"
#include "cuda/gemv.cuh"
#include "cuda/gemv_tc.cuh"
#include "cuda/split_k.cuh"

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
// tensor-core kernel, kMmaCtasPerSm (gemm_mma.cuh: its register budget; up to 53 KB of shared memory each).
constexpr int64_t kGemvCtasPerSm = 4;
// The tensor-core GEMV aims at gemv_tc_ctas_per_sm (gemv_tc.cuh) CTAs per SM, with at least as many blocks each
// as the GEMV kernel.
constexpr int64_t kGemvTcMinBlocksPerCta = 8;
// Each CTA gets at least this many 32-row blocks of K, so its fixed costs (x staging and the cross-warp
// reduction; the tensor-core kernel's pipeline fill) stay small next to the weight stream.
constexpr int64_t kGemvMinBlocksPerCta = 8;
constexpr int64_t kMmaMinBlocksPerCta = 16;

// Splits K as choose_split_k decides for the plan's output tiles; sets plan.splits, plan.blocks_per_cta and grid.z.
void split_k(GemmPlan& plan, const GemmProblem& problem, int64_t ctas_per_sm, int64_t min_blocks_per_cta,
             int64_t block_multiple) {
  const SplitK split = choose_split_k(static_cast<int64_t>(plan.grid.x) * plan.grid.y, problem.k / core::kBlockValues,
                                      problem.m, problem.n, problem.sms, ctas_per_sm, min_blocks_per_cta, block_multiple);
  plan.splits = split.splits;
  plan.blocks_per_cta = split.blocks_per_cta;
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

void launch_gemv_tc_bits(int bits, const FusedGemmParams& p, ActType type, dim3 grid, cudaStream_t stream) {
  switch (bits) {
    case 2: launch_gemv_tc<2>(p, type, grid, stream); break;
    case 3: launch_gemv_tc<3>(p, type, grid, stream); break;
    default: launch_gemv_tc<4>(p, type, grid, stream);
  }
}

cudaError_t launch_wgmma_bits(int bits, const FusedGemmParams& p, ActType type, int tile_rows, dim3 grid,
                              cudaStream_t stream) {
  switch (bits) {
    case 2: return launch_gemm_wgmma<2>(p, type, tile_rows, grid, stream);
    case 3: return launch_gemm_wgmma<3>(p, type, tile_rows, grid, stream);
    case 4: return launch_gemm_wgmma<4>(p, type, tile_rows, grid, stream);
    default: return launch_gemm_wgmma<8>(p, type, tile_rows, grid, stream);
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
  if (m >= kFusedMaxDim || problem.n >= kFusedMaxDim || problem.k >= kFusedMaxDim) return plan;
  const bool mma = problem.mma_available && problem.x_aligned;
  // 2- and 4-bit weights in fragment order, 3-bit in the checkpoint order (they have no other): what the kernels
  // that decode into A fragments (tensor-core GEMV, Hopper kernel) read.
  const bool tc_layout = problem.bits == 3 ? !problem.fragment_order
                                           : (problem.bits == 2 || problem.bits == 4) && problem.fragment_order;
  const bool tensor_core_gemv = mma && problem.tensor_core_gemv && tc_layout && !problem.has_g_idx &&
                                problem.scales_aligned &&
                                gemv_tc_group_class(problem.group_size, problem.k, problem.bits) != 0;
  const bool wgmma_layout = tc_layout || (problem.bits == 8 && !problem.fragment_order);
  const bool wgmma = mma && problem.wgmma_available && wgmma_layout && !problem.has_g_idx && problem.scales_aligned &&
                     wgmma_takes_groups(problem.group_size);
  if (wgmma && m >= kWgmmaMinRows) {
    plan.path = GemmPath::kWgmma;
    plan.wgmma_tile_rows = wgmma_tile_rows(m, problem.n, problem.sms, problem.bits);
    plan.grid = dim3(static_cast<unsigned>((m + plan.wgmma_tile_rows - 1) / plan.wgmma_tile_rows),
                     static_cast<unsigned>((problem.n + kWgmmaColumns - 1) / kWgmmaColumns));
    split_k(plan, problem, kWgmmaCtasPerSm, kWgmmaMinBlocksPerCta, kWgmmaStageBlocks);
    return plan;
  }
  // Rows from which the tensor-core kernel takes over from the small-batch kernels.
  const int64_t small_batch_rows = tensor_core_gemv ? kGemvTcMaxRows : kGemvMaxRowsPerCta;
  const int64_t mma_min_rows = problem.mma_min_rows == kAutoMmaMinRows
                                   ? small_batch_rows + 1
                                   : std::min<int64_t>(std::max<int64_t>(problem.mma_min_rows, 1), small_batch_rows + 1);
  if (tensor_core_gemv && m < mma_min_rows) {
    plan.path = GemmPath::kGemvTensorCore;
    plan.rows_per_cta = static_cast<int>(m);
    plan.grid = dim3(1, static_cast<unsigned>((problem.n + kGemvTcColumns - 1) / kGemvTcColumns));
    const int row_tiles = m <= kGemvTcTileRows ? 1 : 2;
    split_k(plan, problem, gemv_tc_ctas_per_sm(row_tiles), kGemvTcMinBlocksPerCta, kGemvTcSplitBlocks);
  } else if (mma ? m < mma_min_rows : m <= kGemvMaxRows) {
    plan.path = GemmPath::kGemv;
    plan.rows_per_cta = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : kGemvMaxRowsPerCta;
    plan.grid = dim3(static_cast<unsigned>((m + plan.rows_per_cta - 1) / plan.rows_per_cta),
                     static_cast<unsigned>((problem.n + kGemvColumns - 1) / kGemvColumns));
    split_k(plan, problem, kGemvCtasPerSm, kGemvMinBlocksPerCta, 1);
  } else if (mma && m <= kMmaMaxRows) {
    plan.path = GemmPath::kMma;
    plan.mma_tiles = m <= 16 ? 1 : m <= 32 ? 2 : 4;
    plan.grid = dim3(static_cast<unsigned>((m + 16 * plan.mma_tiles - 1) / (16 * plan.mma_tiles)),
                     static_cast<unsigned>((problem.n + mma_columns(plan.mma_tiles) - 1) / mma_columns(plan.mma_tiles)));
    split_k(plan, problem, kMmaCtasPerSm, kMmaMinBlocksPerCta, kMmaTileBlocks);
  }
  return plan;
}

cudaError_t launch_fused_gemm(const GemmPlan& plan, int bits, const FusedGemmParams& p, ActType type,
                              cudaStream_t stream) {
  if (plan.path == GemmPath::kGemv) {
    launch_gemv_bits(bits, p, type, plan.rows_per_cta, plan.grid, stream);
  } else if (plan.path == GemmPath::kGemvTensorCore) {
    launch_gemv_tc_bits(bits, p, type, plan.grid, stream);
  } else if (plan.path == GemmPath::kWgmma) {
    const cudaError_t error = launch_wgmma_bits(bits, p, type, plan.wgmma_tile_rows, plan.grid, stream);
    if (error != cudaSuccess) return error;
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
