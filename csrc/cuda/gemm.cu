// CUDA `gemm`: y = x @ W^T + bias with W in the GPTQ layout.
//
// Two paths, chosen from shapes and dtypes only (never from tensor values, so the op needs no host
// synchronisation and can be captured in a CUDA graph):
//  * fp16/bf16 x with at most kGemvMaxRows rows: the fused kernel of gemv_kernel.cuh, which streams the packed
//    weight once and never forms the dequantized matrix (plus a small split-K reduction when K is split);
//  * otherwise (larger batches, fp32 x, a qweight not 16-byte aligned): dequantize W^T to x's dtype with the
//    layout kernel, then one cuBLAS GEMM with the bias fused (addmm). Correct for every input the op accepts.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/bitpack.h"
#include "core/checks.h"
#include "cuda/gemv.cuh"
#include "cuda/layout.cuh"
#include "cuda/torch_types.h"

namespace gptq_kernels {
namespace cuda {
namespace {

// Up to 32 rows, up to 4 row tiles of 8 rows each re-read the same weight tile at about the same time (they are
// neighbours in the grid), so the extra reads mostly hit L2; above that, dequantize + cuBLAS is the better path
// until a tensor-core kernel exists.
constexpr int64_t kGemvMaxRows = 32;
// Split-K aims for this many CTAs per SM: 4 x 128 threads x ~128 bytes of loads in flight each.
constexpr int64_t kTargetCtasPerSm = 4;
// Each CTA gets at least this many 32-row blocks of K (2 per warp), so the x staging and the cross-warp
// reduction stay small next to the weight stream.
constexpr int64_t kMinBlocksPerCta = 8;
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

void launch_gemv_bits(int64_t bits, const GemvParams& p, ActType type, int rows_per_cta, dim3 grid,
                      cudaStream_t stream) {
  switch (bits) {
    case 2: launch_gemv<2>(p, type, rows_per_cta, grid, stream); break;
    case 3: launch_gemv<3>(p, type, rows_per_cta, grid, stream); break;
    case 4: launch_gemv<4>(p, type, rows_per_cta, grid, stream); break;
    default: launch_gemv<8>(p, type, rows_per_cta, grid, stream);
  }
}

// The fused small-batch path; x2 is [M, K] with unit stride along K, y is [M, N] contiguous.
void fused_gemv(const core::QuantGeometry& geo, const at::Tensor& x2, const at::Tensor& qweight,
                const at::Tensor& qzeros, const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                const c10::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t m = x2.size(0);
  const int rows_per_cta = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : kGemvMaxRowsPerCta;
  const int64_t row_tiles = (m + rows_per_cta - 1) / rows_per_cta;
  const int64_t col_tiles = (geo.n + kGemvColumns - 1) / kGemvColumns;
  const int64_t kblocks = geo.k / core::kBlockValues;

  // Split K until the grid fills the GPU, within the limits above.
  const int64_t sms = multiprocessor_count(qweight.device().index());
  int64_t splits = std::max<int64_t>(1, (sms * kTargetCtasPerSm + row_tiles * col_tiles - 1) / (row_tiles * col_tiles));
  splits = std::min(splits, std::max<int64_t>(1, kblocks / kMinBlocksPerCta));
  splits = std::min(splits, std::max<int64_t>(1, kMaxWorkspaceBytes / (m * geo.n * 4)));
  const int64_t blocks_per_cta = (kblocks + splits - 1) / splits;
  splits = (kblocks + blocks_per_cta - 1) / blocks_per_cta;  // no CTA without work

  at::Tensor workspace;
  if (splits > 1) workspace = at::empty({splits, m, geo.n}, x2.options().dtype(at::kFloat));

  GemvParams p{};
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
  p.blocks_per_cta = static_cast<int>(blocks_per_cta);
  p.y = y.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.bias_type = bias.has_value() ? float_type_of(bias->scalar_type()) : FloatType::kFloat;
  p.workspace = splits > 1 ? workspace.data_ptr<float>() : nullptr;

  const ActType type = x2.scalar_type() == at::kHalf ? ActType::kHalf : ActType::kBFloat16;
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles), static_cast<unsigned>(splits));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch_gemv_bits(geo.bits, p, type, rows_per_cta, grid, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  if (splits > 1) {
    const int64_t mn = m * geo.n;
    const int64_t blocks = std::min<int64_t>((mn + kReduceThreads - 1) / kReduceThreads, sms * 8);
    if (type == ActType::kHalf) {
      splitk_reduce_kernel<__half><<<blocks, kReduceThreads, 0, stream>>>(
          p.workspace, static_cast<int>(splits), mn, geo.n, p.bias, p.bias_type, static_cast<__half*>(p.y));
    } else {
      splitk_reduce_kernel<__nv_bfloat16><<<blocks, kReduceThreads, 0, stream>>>(
          p.workspace, static_cast<int>(splits), mn, geo.n, p.bias, p.bias_type, static_cast<__nv_bfloat16*>(p.y));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
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
  const bool aligned = reinterpret_cast<uintptr_t>(qweight.data_ptr()) % 16 == 0;
  if (half_type && aligned && m <= kGemvMaxRows) {
    at::Tensor y = at::empty({m, geo.n}, x.options());
    fused_gemv(geo, x2, qweight, qzeros, scales, g_idx, bias, y);
    return y.view(out_shape);
  }
  return dequantize_then_gemm(geo, x2, qweight, qzeros, scales, g_idx, bias).view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CUDA, m) { m.impl("gemm", &gemm_cuda); }

}  // namespace cuda
}  // namespace gptq_kernels
