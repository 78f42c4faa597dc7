// CUDA `gemm`: y = x @ W^T + bias with W in the GPTQ layout.
//
// Three paths, chosen from shapes, dtypes and alignment only (never from tensor values, so the op needs no host
// synchronisation and can be captured in a CUDA graph):
//  * fp16/bf16 x with at most kGemvMaxRowsPerCta (8) rows: the fused GEMV kernel (gemv_kernel.cuh), which
//    streams the packed weight once and never forms the dequantized matrix;
//  * fp16/bf16 x with up to kMmaMaxRows rows: the tensor-core kernel (gemm_mma_kernel.cuh), which dequantizes
//    tiles into shared memory and multiplies them with mma.sync (sm_80 and later; GPTQ_KERNELS_NO_MMA=1
//    turns it off, and then up to kGemvMaxRows rows take the GEMV kernel in row tiles of 8);
//  * everything else (larger batches, fp32 x, misaligned tensors): dequantize W^T to x's dtype with the layout
//    kernel, then one cuBLAS GEMM with the bias fused (addmm). Correct for every input the op accepts.
// Both fused kernels split K over CTAs when the output tiles alone cannot fill the GPU; the partial sums then go
// through a small workspace and a second kernel (splitk_reduce_kernel).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/bitpack.h"
#include "core/checks.h"
#include "cuda/gemm_mma.cuh"
#include "cuda/gemv.cuh"
#include "cuda/layout.cuh"
#include "cuda/torch_types.h"

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
constexpr int kReduceThreads = 256;

// y[i] = sum over splits of workspace[s, i] (+ bias), in a fixed order: the result does not depend on timing.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    splitk_reduce_kernel(const float* __restrict__ workspace, int splits, int64_t mn, int64_t n,
                         const void* bias, FloatType bias_type, T* __restrict__ y) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x; i < mn;
       i += static_cast<int64_t>(gridDim.x) * kReduceThreads) {
    float v = 0.f;
    for (int s = 0; s < splits; ++s) v += workspace[s * mn + i];
    if (bias != nullptr) v += load_float(bias, i % n, bias_type);
    y[i] = FloatConvert<T>::from_float(v);
  }
}

struct SplitK {
  int64_t splits;          // CTAs along K (grid.z)
  int64_t blocks_per_cta;  // 32-row blocks of K per CTA, a multiple of block_multiple
};

// Splits K until the grid has about ctas_per_sm CTAs per SM, within the limits above. No CTA is left without work.
SplitK choose_split_k(int64_t output_tiles, int64_t kblocks, int64_t m, int64_t n, int64_t sms, int64_t ctas_per_sm,
                      int64_t min_blocks_per_cta, int64_t block_multiple) {
  int64_t splits = std::max<int64_t>(1, (sms * ctas_per_sm + output_tiles - 1) / output_tiles);
  splits = std::min(splits, std::max<int64_t>(1, kblocks / min_blocks_per_cta));
  splits = std::min(splits, std::max<int64_t>(1, kMaxWorkspaceBytes / (m * n * 4)));
  int64_t blocks_per_cta = (kblocks + splits - 1) / splits;
  blocks_per_cta = (blocks_per_cta + block_multiple - 1) / block_multiple * block_multiple;
  return {(kblocks + blocks_per_cta - 1) / blocks_per_cta, blocks_per_cta};
}

// y = sum of the split-K partial sums (+ bias), for the fused paths.
void reduce_splits(const float* workspace, int64_t splits, int64_t m, int64_t n, const void* bias,
                   FloatType bias_type, ActType type, void* y, int64_t sms, cudaStream_t stream) {
  const int64_t mn = m * n;
  const int64_t blocks = std::min<int64_t>((mn + kReduceThreads - 1) / kReduceThreads, sms * 8);
  if (type == ActType::kHalf) {
    splitk_reduce_kernel<__half><<<blocks, kReduceThreads, 0, stream>>>(
        workspace, static_cast<int>(splits), mn, n, bias, bias_type, static_cast<__half*>(y));
  } else {
    splitk_reduce_kernel<__nv_bfloat16><<<blocks, kReduceThreads, 0, stream>>>(
        workspace, static_cast<int>(splits), mn, n, bias, bias_type, static_cast<__nv_bfloat16*>(y));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

ActType act_type_of(const at::Tensor& x) {
  return x.scalar_type() == at::kHalf ? ActType::kHalf : ActType::kBFloat16;
}

// The tensor-core kernel is on unless GPTQ_KERNELS_NO_MMA is set to something other than "0" (read once).
bool mma_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("GPTQ_KERNELS_NO_MMA");
    return v == nullptr || std::strcmp(v, "0") == 0 || v[0] == '\0';
  }();
  return enabled;
}

void launch_gemv_bits(int64_t bits, const FusedGemmParams& p, ActType type, int rows_per_cta, dim3 grid,
                      cudaStream_t stream) {
  switch (bits) {
    case 2: launch_gemv<2>(p, type, rows_per_cta, grid, stream); break;
    case 3: launch_gemv<3>(p, type, rows_per_cta, grid, stream); break;
    case 4: launch_gemv<4>(p, type, rows_per_cta, grid, stream); break;
    default: launch_gemv<8>(p, type, rows_per_cta, grid, stream);
  }
}

cudaError_t launch_mma_bits(int64_t bits, const FusedGemmParams& p, ActType type, int mt, dim3 grid, cudaStream_t stream) {
  switch (bits) {
    case 2: return launch_mma<2>(p, type, mt, grid, stream);
    case 3: return launch_mma<3>(p, type, mt, grid, stream);
    case 4: return launch_mma<4>(p, type, mt, grid, stream);
    default: return launch_mma<8>(p, type, mt, grid, stream);
  }
}

// The arguments of either fused kernel; allocates the split-K workspace into `workspace` when K is split.
FusedGemmParams fused_params(const core::QuantGeometry& geo, const at::Tensor& x2, const at::Tensor& qweight,
                             const at::Tensor& qzeros, const at::Tensor& scales,
                             const c10::optional<at::Tensor>& g_idx, const c10::optional<at::Tensor>& bias,
                             const SplitK& split, at::Tensor& workspace, at::Tensor& y) {
  const int64_t m = x2.size(0);
  if (split.splits > 1) workspace = at::empty({split.splits, m, geo.n}, x2.options().dtype(at::kFloat));
  FusedGemmParams p{};
  p.x = x2.data_ptr();
  p.ldx = x2.stride(0);
  p.qweight = reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>());
  p.qzeros = reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>());
  p.scales = scales.data_ptr();
  p.scale_type = float_type_of(scales.scalar_type());
  p.g_idx = g_idx.has_value() ? g_idx->data_ptr<int32_t>() : nullptr;
  p.group_size = kernel_group_size(geo);
  p.groups = static_cast<int>(geo.groups);
  p.m = static_cast<int>(m);
  p.k = static_cast<int>(geo.k);
  p.n = static_cast<int>(geo.n);
  p.blocks_per_cta = static_cast<int>(split.blocks_per_cta);
  p.y = y.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.bias_type = bias.has_value() ? float_type_of(bias->scalar_type()) : FloatType::kFloat;
  p.workspace = split.splits > 1 ? workspace.data_ptr<float>() : nullptr;
  return p;
}

// The GEMV path; x2 is [M, K] with unit stride along K, y is [M, N] contiguous.
void fused_gemv(const core::QuantGeometry& geo, const at::Tensor& x2, const at::Tensor& qweight,
                const at::Tensor& qzeros, const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                const c10::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t m = x2.size(0);
  const int rows_per_cta = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : kGemvMaxRowsPerCta;
  const int64_t row_tiles = (m + rows_per_cta - 1) / rows_per_cta;
  const int64_t col_tiles = (geo.n + kGemvColumns - 1) / kGemvColumns;
  const int64_t sms = device_info(qweight.device().index()).multiprocessors;
  const SplitK split = choose_split_k(row_tiles * col_tiles, geo.k / core::kBlockValues, m, geo.n, sms,
                                      kGemvCtasPerSm, kGemvMinBlocksPerCta, 1);
  at::Tensor workspace;
  const FusedGemmParams p = fused_params(geo, x2, qweight, qzeros, scales, g_idx, bias, split, workspace, y);

  const ActType type = act_type_of(x2);
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles),
                  static_cast<unsigned>(split.splits));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch_gemv_bits(geo.bits, p, type, rows_per_cta, grid, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (split.splits > 1) reduce_splits(p.workspace, split.splits, m, geo.n, p.bias, p.bias_type, type, p.y, sms, stream);
}

// The tensor-core path; x2 is [M, K] with unit stride along K, 16-byte aligned rows; y is [M, N] contiguous.
void fused_mma(const core::QuantGeometry& geo, const at::Tensor& x2, const at::Tensor& qweight,
               const at::Tensor& qzeros, const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
               const c10::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t m = x2.size(0);
  const int mt = m <= 16 ? 1 : m <= 32 ? 2 : 4;  // 16-row mma tiles per CTA
  const int64_t row_tiles = (m + 16 * mt - 1) / (16 * mt);
  const int64_t col_tiles = (geo.n + kMmaColumns - 1) / kMmaColumns;
  const int64_t sms = device_info(qweight.device().index()).multiprocessors;
  const SplitK split = choose_split_k(row_tiles * col_tiles, geo.k / core::kBlockValues, m, geo.n, sms,
                                      kMmaCtasPerSm, kMmaMinBlocksPerCta, kMmaTileBlocks);
  at::Tensor workspace;
  const FusedGemmParams p = fused_params(geo, x2, qweight, qzeros, scales, g_idx, bias, split, workspace, y);

  const ActType type = act_type_of(x2);
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles),
                  static_cast<unsigned>(split.splits));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(launch_mma_bits(geo.bits, p, type, mt, grid, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (split.splits > 1) reduce_splits(p.workspace, split.splits, m, geo.n, p.bias, p.bias_type, type, p.y, sms, stream);
}

// The general path: W^T dequantized to x's dtype, then cuBLAS (with the bias in its epilogue).
at::Tensor dequantize_then_gemm(const core::QuantGeometry& geo, const at::Tensor& x2, const at::Tensor& qweight,
                                const at::Tensor& qzeros, const at::Tensor& scales,
                                const c10::optional<at::Tensor>& g_idx, const c10::optional<at::Tensor>& bias) {
  at::Tensor w = at::empty({geo.k, geo.n}, x2.options());
  launch_dequantize(dequant_params(geo, qweight, qzeros, scales, g_idx), static_cast<int>(geo.bits),
                    float_type_of(x2.scalar_type()), w.data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (bias.has_value()) return at::addmm(bias->to(x2.scalar_type()), x2, w);
  return at::mm(x2, w);
}

at::Tensor gemm_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                     const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                     const c10::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  constexpr const char* op = "gptq_kernels.gemm";
  const core::QuantGeometry geo = core::check_quantized_weight(op, qweight, qzeros, scales, g_idx, bits, group_size);
  core::check_activations(op, x, geo, qweight);
  core::check_bias(op, bias, geo, qweight);
  const c10::cuda::CUDAGuard guard(qweight.device());

  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = geo.n;
  // A view whenever x's rows can be addressed with one stride (any contiguous or row-sliced x); the kernels
  // need unit stride along K only.
  at::Tensor x2 = x.reshape({-1, geo.k});
  if (x2.stride(1) != 1) x2 = x2.contiguous();
  const int64_t m = x2.size(0);
  if (m == 0) return at::empty(out_shape, x.options());

  const bool half_type = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  // 16-byte loads of qweight need a 16-byte aligned base (rows are N * 4 bytes, a multiple of 128).
  const bool weight_aligned = reinterpret_cast<uintptr_t>(qweight.data_ptr()) % 16 == 0;
  // The tensor-core kernel copies x in 16-byte pieces: aligned base and a row stride of whole pieces.
  const bool x_aligned = reinterpret_cast<uintptr_t>(x2.data_ptr()) % 16 == 0 && (m == 1 || x2.stride(0) % 8 == 0);
  const bool mma = mma_enabled() && device_info(qweight.device().index()).major >= 8;
  if (half_type && weight_aligned) {
    const bool use_gemv = m <= kGemvMaxRowsPerCta || (!(mma && x_aligned) && m <= kGemvMaxRows);
    const bool use_mma = !use_gemv && mma && x_aligned && m <= kMmaMaxRows;
    if (use_gemv || use_mma) {
      at::Tensor y = at::empty({m, geo.n}, x.options());
      if (use_gemv) {
        fused_gemv(geo, x2, qweight, qzeros, scales, g_idx, bias, y);
      } else {
        fused_mma(geo, x2, qweight, qzeros, scales, g_idx, bias, y);
      }
      return y.view(out_shape);
    }
  }
  return dequantize_then_gemm(geo, x2, qweight, qzeros, scales, g_idx, bias).view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CUDA, m) { m.impl("gemm", &gemm_cuda); }

}  // namespace cuda
}  // namespace gptq_kernels
