// CUDA `bcq_dequantize` and `bcq_gemm`: binary-coded (BCQ) weights (layout: csrc/core/bcq.h).
//
// bcq_gemm picks its path from shapes, dtypes and alignment only (never from tensor values, so it needs no host
// synchronisation and can be captured in a CUDA graph):
//  * up to kBcqGemvMaxRows rows, 2 or 3 planes, groups on 32-input boundaries, 16-byte aligned qplanes: the
//    lookup-table kernel (bcq_gemv_kernel.cuh), fp16, bf16 or fp32 activations, in row tiles of up to 4 rows,
//    planned and launched by bcq_fused.cu;
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
#include "cuda/device_support.h"
#include "cuda/torch_types.h"

namespace gptq_kernels {
namespace cuda {
namespace {

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
  const BcqGemvPlan plan =
      plan_bcq_gemv(m, geo.k, geo.n, device_info(qplanes.device().index()).multiprocessors);
  at::Tensor workspace;
  if (plan.splits > 1) workspace = at::empty({plan.splits, m, geo.n}, x2.options().dtype(at::kFloat));
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
  p.blocks_per_cta = static_cast<int>(plan.blocks_per_cta);
  p.y = y.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.bias_type = bias.has_value() ? float_type_of(bias->scalar_type()) : FloatType::kFloat;
  p.workspace = plan.splits > 1 ? workspace.data_ptr<float>() : nullptr;
  C10_CUDA_CHECK(launch_bcq_fused(plan, static_cast<int>(geo.planes), p, float_type_of(x2.scalar_type()),
                                  c10::cuda::getCurrentCUDAStream()));
}

at::Tensor bcq_dequantize_cuda(const at::Tensor& qplanes, const at::Tensor& alpha, const at::Tensor& offset,
                               int64_t group_size) {
  constexpr const char* op = "gptq_kernels.bcq_dequantize";
  const core::BcqGeometry geo = core::check_bcq_weight(op, qplanes, alpha, offset, group_size);
  const c10::cuda::CUDAGuard guard(qplanes.device());
  check_device_supported(op);
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
  check_device_supported(op);

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
