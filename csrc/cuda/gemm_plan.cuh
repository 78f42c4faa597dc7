// How the CUDA `gemm` computes y = x @ W^T for one call: which kernel, its grid and its split of K. The plan is a
// pure function of shapes, dtypes, alignment and the GPU's SM count, never of tensor values, so the op needs no
// host synchronisation and can be captured in a CUDA graph. Free of ATen: the CPU emulator in tests/emulation
// runs the same plans through the same launchers (gemm_fused.cu) as the op in gemm.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"

namespace gptq_kernels {
namespace cuda {

// GemmProblem::mma_min_rows when GPTQ_KERNELS_MMA_MIN_ROWS is not set: the small-batch kernels keep every batch
// they can take (1-8 rows; 1-16 for layers the tensor-core GEMV takes).
constexpr int64_t kAutoMmaMinRows = 0;
// The fused kernels count in 32-bit ints (a qzeros row is N * BITS bits, a row of fp32 scales 4 N bytes), so larger
// problems (M, N or K from 2^28) take dequantize + cuBLAS.
constexpr int64_t kFusedMaxDim = int64_t{1} << 28;

enum class GemmPath {
  kGemv,                // up to 8 rows (32 without the tensor-core kernel): gemv_kernel.cuh
  kGemvTensorCore,      // up to 16 rows, 2/4-bit in fragment order or 3-bit, no g_idx: gemv_tc_kernel.cuh
  kMma,                 // up to 256 rows: the tensor-core kernel, gemm_mma_kernel.cuh
  kWgmma,               // from 17 rows when asked for (GPTQ_KERNELS_WGMMA=1), sm_90a: gemm_wgmma_kernel.cuh
  kDequantizeThenGemm,  // everything else: W^T dequantized to x's dtype, then one cuBLAS GEMM (gemm.cu)
};

struct GemmProblem {
  int64_t m, k, n;
  bool half_activations;  // x is fp16 or bf16 (fp32 x always takes the general path)
  bool weight_aligned;    // qweight's base is 16-byte aligned
  bool x_aligned;         // x's base is 16-byte aligned and its row stride a multiple of 8 elements
  bool mma_available;     // sm_80 or later and not switched off with GPTQ_KERNELS_NO_MMA
  int64_t sms;            // streaming multiprocessors of the GPU
  // Batches from this many rows take the tensor-core kernel (gemm_mma_kernel.cuh) when it is available: 1 to 9,
  // or 1 to 17 for layers the tensor-core GEMV takes, or kAutoMmaMinRows. GPTQ_KERNELS_MMA_MIN_ROWS sets it, to
  // compare the kernels at small batches.
  int64_t mma_min_rows = kAutoMmaMinRows;
  int bits = 4;
  bool fragment_order = false;   // qweight in fragment order (core/fragment_order.h)
  bool has_g_idx = false;
  int64_t group_size = -1;       // -1 or at most k (kernel_group_size)
  bool scales_aligned = false;   // scales' base is 16-byte aligned
  // The tensor-core GEMV takes the small batches it can (see kGemvTensorCore); GPTQ_KERNELS_GEMV_TC=0 turns it
  // off, to compare it with the GEMV kernel.
  bool tensor_core_gemv = true;
  // The Hopper kernel (gemm_wgmma.cuh) may take batches from kWgmmaMinRows rows of 2- and 4-bit weights in
  // fragment order and 3- and 8-bit weights: an sm_90a build on a compute capability 9.0 device, and
  // GPTQ_KERNELS_WGMMA=1.
  bool wgmma_available = false;
};

struct GemmPlan {
  GemmPath path;
  int rows_per_cta;        // kGemv: 1, 2, 4 or 8 (kGemvTensorCore: all rows, at most 16, in one CTA)
  int mma_tiles;           // kMma: 16-row mma tiles per CTA, 1, 2 or 4
  int wgmma_tile_rows;     // kWgmma: batch rows per CTA, 64 or 128
  dim3 grid;               // [row tiles, column tiles, K splits]
  int64_t splits;          // grid.z; above 1 the fused kernel writes fp32 partial sums to a workspace
  int64_t blocks_per_cta;  // 32-row blocks of K per CTA (FusedGemmParams::blocks_per_cta)
};

GemmPlan plan_gemm(const GemmProblem& problem);

// Launches the plan's fused kernel and, when K is split, the reduction of its partial sums into p.y. p.workspace
// must then hold plan.splits * m * n floats. Returns the first launch error (kernels run asynchronously).
cudaError_t launch_fused_gemm(const GemmPlan& plan, int bits, const FusedGemmParams& p, ActType type,
                              cudaStream_t stream);

}  // namespace cuda
}  // namespace gptq_kernels
