// CUDA `bcq_dequantize` and `bcq_gemm`: binary-coded (BCQ) weights (layout: csrc/core/bcq.h).
//
// bcq_gemm picks its path from shapes, dtypes and alignment only (never from tensor values, so it needs no host
// synchronisation and can be captured in a CUDA graph):
//  * up to kBcqGemvMaxRows rows, 2 or 3 planes, groups on 32-input boundaries, 16-byte aligned qplanes: the
//    lookup-table kernel (bcq_gemv_kernel.cuh), fp16, bf16 or fp32 activations, in row tiles of up to 4 rows;
//  * everything else: dequantize W^T to x's dtype (bcq_dequantize.cu), then one cuBLAS GEMM with the bias fused
//    (addmm). Correct for every input the op accepts.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/bcq.h"
#include "core/bcq_checks.h"
#include "core/checks.h"
#include "cuda/bcq.cuh"
#include "cuda/torch_types.h"

namespace gptq_kernels {
namespace cuda {
namespace {

// Rows the lookup-table kernel takes (two row tiles of 4 from 5 rows on; their CTAs re-read the same plane words
// at about the same time, mostly from L2). Above it the tables would be rebuilt for every 4 rows and every column
// tile, and dequantize + cuBLAS wins. To be tuned with benchmarks/bench_cuda.py on a GPU.
constexpr int64_t kBcqGemvMaxRows = 8;
// Split-K aims for this many CTAs per SM (4 warps each, ~100-128 bytes of plane words in flight per thread),
// and gives each CTA at least one stage of K, so that building its tables stays small next to the lookups.
constexpr int64_t kBcqCtasPerSm = 4;
constexpr int64_t kBcqMinBlocksPerCta = kBcqStageBlocks;
// Cap on the fp32 split-K partial sums [splits, M, N]: small enough to stay in L2 between the two kernels.
constexpr int64_t kBcqMaxWorkspaceBytes = int64_t{8} << 20;
constexpr int kBcqReduceThreads = 256;

// y[i] = sum over splits of workspace[s, i] (+ bias), in a fixed order: the result does not depend on timing.
// (The uniform gemm has the same kernel for fp16/bf16 in gemm.cu; this one also writes fp32.)
template <typename T>
__global__ void __launch_bounds__(kBcqReduceThreads)
    bcq_splitk_reduce_kernel(const float* __restrict__ workspace, int splits, int64_t mn, int64_t n,
                             const void* bias, FloatType bias_type, T* __restrict__ y) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBcqReduceThreads + threadIdx.x; i < mn;
       i += static_cast<int64_t>(gridDim.x) * kBcqReduceThreads) {
    float v = 0.f;
    for (int s = 0; s < splits; ++s) v += workspace[s * mn + i];
    if (bias != nullptr) v += load_float(bias, i % n, bias_type);
    y[i] = FloatConvert<T>::from_float(v);
  }
}

void reduce_splits(const BcqGemvParams& p, int64_t splits, FloatType type, int64_t sms, cudaStream_t stream) {
  const int64_t mn = static_cast<int64_t>(p.m) * p.n;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((mn + kBcqReduceThreads - 1) / kBcqReduceThreads, sms * 8));
  const int s = static_cast<int>(splits);
  switch (type) {
    case FloatType::kHalf:
      bcq_splitk_reduce_kernel<__half><<<blocks, kBcqReduceThreads, 0, stream>>>(
          p.workspace, s, mn, p.n, p.bias, p.bias_type, static_cast<__half*>(p.y));
      break;
    case FloatType::kBFloat16:
      bcq_splitk_reduce_kernel<__nv_bfloat16><<<blocks, kBcqReduceThreads, 0, stream>>>(
          p.workspace, s, mn, p.n, p.bias, p.bias_type, static_cast<__nv_bfloat16*>(p.y));
      break;
    default:
      bcq_splitk_reduce_kernel<float><<<blocks, kBcqReduceThreads, 0, stream>>>(
          p.workspace, s, mn, p.n, p.bias, p.bias_type, static_cast<float*>(p.y));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

BcqDequantParams dequant_params(const core::BcqGeometry& geo, const at::Tensor& qplanes, const at::Tensor& alpha,
                                const at::Tensor& offset) {
  BcqDequantParams p{};
  p.qplanes = reinterpret_cast<const uint32_t*>(qplanes.data_ptr<int32_t>());
  p.alpha = alpha.data_ptr();
  p.alpha_type = float_type_of(alpha.scalar_type());
  p.offset = offset.data_ptr();
  p.offset_type = float_type_of(offset.scalar_type());
  p.planes = static_cast<int>(geo.planes);
  p.group_size = kernel_group_size(geo.as_quant());
  p.groups = static_cast<int>(geo.groups);
  p.k = geo.k;
  p.n = geo.n;
  return p;
}

// The lookup-table path; x2 is [M, K] with unit stride along K, y is [M, N] contiguous.
void lut_gemv(const core::BcqGeometry& geo, const at::Tensor& x2, const at::Tensor& qplanes, const at::Tensor& alpha,
              const at::Tensor& offset, const c10::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t m = x2.size(0);
  const int rows_per_cta = m <= 1 ? 1 : m <= 2 ? 2 : kBcqMaxRowsPerCta;
  const int64_t row_tiles = (m + rows_per_cta - 1) / rows_per_cta;
  const int64_t col_tiles = (geo.n + kBcqColumns - 1) / kBcqColumns;
  const int64_t kblocks = geo.k / core::kBlockValues;
  const int64_t sms = device_info(qplanes.device().index()).multiprocessors;

  // Split K until the grid has about kBcqCtasPerSm CTAs per SM, within the limits above; whole stages per CTA,
  // and no CTA without work.
  int64_t splits = std::max<int64_t>(1, (sms * kBcqCtasPerSm + row_tiles * col_tiles - 1) / (row_tiles * col_tiles));
  splits = std::min(splits, std::max<int64_t>(1, kblocks / kBcqMinBlocksPerCta));
  splits = std::min(splits, std::max<int64_t>(1, kBcqMaxWorkspaceBytes / (m * geo.n * 4)));
  int64_t blocks_per_cta = (kblocks + splits - 1) / splits;
  blocks_per_cta = (blocks_per_cta + kBcqStageBlocks - 1) / kBcqStageBlocks * kBcqStageBlocks;
  splits = (kblocks + blocks_per_cta - 1) / blocks_per_cta;

  at::Tensor workspace;
  if (splits > 1) workspace = at::empty({splits, m, geo.n}, x2.options().dtype(at::kFloat));
  BcqGemvParams p{};
  p.x = x2.data_ptr();
  p.ldx = x2.stride(0);
  p.qplanes = reinterpret_cast<const uint32_t*>(qplanes.data_ptr<int32_t>());
  p.alpha = alpha.data_ptr();
  p.alpha_type = float_type_of(alpha.scalar_type());
  p.offset = offset.data_ptr();
  p.offset_type = float_type_of(offset.scalar_type());
  p.group_size = kernel_group_size(geo.as_quant());
  p.groups = static_cast<int>(geo.groups);
  p.m = static_cast<int>(m);
  p.k = static_cast<int>(geo.k);
  p.n = static_cast<int>(geo.n);
  p.blocks_per_cta = static_cast<int>(blocks_per_cta);
  p.y = y.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.bias_type = bias.has_value() ? float_type_of(bias->scalar_type()) : FloatType::kFloat;
  p.workspace = splits > 1 ? workspace.data_ptr<float>() : nullptr;

  const FloatType type = float_type_of(x2.scalar_type());
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles), static_cast<unsigned>(splits));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (geo.planes == 2) {
    launch_bcq_gemv<2>(p, type, rows_per_cta, grid, stream);
  } else {
    launch_bcq_gemv<3>(p, type, rows_per_cta, grid, stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (splits > 1) reduce_splits(p, splits, type, sms, stream);
}

at::Tensor bcq_dequantize_cuda(const at::Tensor& qplanes, const at::Tensor& alpha, const at::Tensor& offset,
                               int64_t group_size) {
  const core::BcqGeometry geo = core::check_bcq_weight("gptq_kernels.bcq_dequantize", qplanes, alpha, offset,
                                                       group_size);
  const c10::cuda::CUDAGuard guard(qplanes.device());
  at::Tensor out = at::empty({geo.k, geo.n}, alpha.options());
  launch_bcq_dequantize(dequant_params(geo, qplanes, alpha, offset), float_type_of(alpha.scalar_type()),
                        out.data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor bcq_gemm_cuda(const at::Tensor& x, const at::Tensor& qplanes, const at::Tensor& alpha,
                         const at::Tensor& offset, const c10::optional<at::Tensor>& bias, int64_t group_size) {
  constexpr const char* op = "gptq_kernels.bcq_gemm";
  const core::BcqGeometry geo = core::check_bcq_weight(op, qplanes, alpha, offset, group_size);
  core::check_bcq_inputs(op, x, bias, geo, qplanes);
  const c10::cuda::CUDAGuard guard(qplanes.device());

  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = geo.n;
  // A view whenever x's rows can be addressed with one stride; the kernels need unit stride along K only.
  at::Tensor x2 = x.reshape({-1, geo.k});
  if (x2.stride(1) != 1) x2 = x2.contiguous();
  const int64_t m = x2.size(0);
  if (m == 0) return at::empty(out_shape, x.options());

  // 16-byte loads of qplanes need a 16-byte aligned base (rows are N * 4 bytes, a multiple of 128).
  const bool aligned = reinterpret_cast<uintptr_t>(qplanes.data_ptr()) % 16 == 0;
  if (m <= kBcqGemvMaxRows && aligned && core::bcq_fused_planes(geo.planes) &&
      core::bcq_groups_align_to_blocks(geo.k, geo.group_size)) {
    at::Tensor y = at::empty({m, geo.n}, x.options());
    lut_gemv(geo, x2, qplanes, alpha, offset, bias, y);
    return y.view(out_shape);
  }
  at::Tensor w = at::empty({geo.k, geo.n}, x2.options());
  launch_bcq_dequantize(dequant_params(geo, qplanes, alpha, offset), float_type_of(x2.scalar_type()), w.data_ptr(),
                        c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor y = bias.has_value() ? at::addmm(bias->to(x2.scalar_type()), x2, w) : at::mm(x2, w);
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CUDA, m) {
  m.impl("bcq_dequantize", &bcq_dequantize_cuda);
  m.impl("bcq_gemm", &bcq_gemm_cuda);
}

}  // namespace cuda
}  // namespace gptq_kernels
