// CUDA `gemm`: y = x @ W^T + bias with W in the GPTQ layout. This file is the ATen side: input checks, output and
// workspace tensors, and the general path. Which path a call takes, with which grid and K split, is decided by
// plan_gemm (gemm_plan.cuh) from shapes, dtypes and alignment only:
//  * fp16/bf16 x with at most 8 rows: the fused GEMV kernel (gemv_kernel.cuh), which streams the packed weight
//    once and never forms the dequantized matrix. For 2- and 4-bit weights in fragment order or 3-bit weights
//    without g_idx and with groups of 32, 64 or a multiple of 128 rows, up to 16 rows take the tensor-core GEMV
//    (gemv_tc_kernel.cuh) instead, which decodes two values per instruction pair and multiplies on the tensor
//    cores (sm_80 and later; GPTQ_KERNELS_GEMV_TC=0 turns it off);
//  * with GPTQ_KERNELS_WGMMA=1 on an H100/H200 (an sm_90a build): from 17 rows of fp16/bf16 x, 2- and 4-bit weights
//    in fragment order and 3- and 8-bit weights without g_idx take the Hopper kernel (gemm_wgmma_kernel.cuh),
//    wgmma with the decoded weights as the register operand; not yet the default, as no GPU has measured it;
//  * fp16/bf16 x with up to 256 rows: the tensor-core kernel (gemm_mma_kernel.cuh), which decodes packed tiles
//    from shared memory into its B fragments and multiplies them with mma.sync (sm_80 and later;
//    GPTQ_KERNELS_NO_MMA=1 turns it off, and then up to 32 rows take the GEMV kernel in row tiles of 8);
//  * everything else (larger batches, fp32 x, misaligned tensors): dequantize W^T to x's dtype with the layout
//    kernel, then one cuBLAS GEMM with the bias fused (addmm). Correct for every input the op accepts.
// Both fused kernels split K over CTAs when the output tiles alone cannot fill the GPU; the partial sums then go
// through a small workspace and a second kernel (gemm_fused.cu). `gemm_fragment_ordered` is the same op for
// 2- and 4-bit weights in fragment order (core/fragment_order.h): every path above reads it.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/bitpack.h"
#include "core/checks.h"
#include "cuda/device_support.h"
#include "cuda/gemm_plan.cuh"
#include "cuda/gemm_wgmma.cuh"
#include "cuda/gemv_tc.cuh"
#include "cuda/layout.cuh"
#include "cuda/torch_types.h"

namespace gptq_kernels {
namespace cuda {
namespace {

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

// The tensor-core GEMV is on unless GPTQ_KERNELS_GEMV_TC is "0" (read once).
bool gemv_tc_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("GPTQ_KERNELS_GEMV_TC");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

// The Hopper kernel is off unless GPTQ_KERNELS_WGMMA is set to something other than "0". Read at every call (a
// getenv, well under a microsecond), so that a benchmark can time it next to the other paths in one process; a
// CUDA graph keeps the path it was captured with.
bool wgmma_requested() {
  const char* v = std::getenv("GPTQ_KERNELS_WGMMA");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

// GPTQ_KERNELS_MMA_MIN_ROWS (read once): the batch from which the tensor-core kernel replaces the small-batch
// kernels, 1 to 17 (plan_gemm caps it at 9 for layers the tensor-core GEMV does not take); unset or out of
// range: automatic. For benchmarking the kernels against each other at small batches.
int64_t mma_min_rows() {
  static const int64_t rows = [] {
    const char* v = std::getenv("GPTQ_KERNELS_MMA_MIN_ROWS");
    const int64_t parsed = v == nullptr ? kAutoMmaMinRows : std::atoll(v);
    return parsed >= 1 && parsed <= kGemvTcMaxRows + 1 ? parsed : kAutoMmaMinRows;
  }();
  return rows;
}

// The arguments of either fused kernel; allocates the split-K workspace when the plan splits K.
FusedGemmParams fused_params(const core::QuantGeometry& geo, const at::Tensor& x2, const at::Tensor& qweight,
                             const at::Tensor& qzeros, const at::Tensor& scales,
                             const c10::optional<at::Tensor>& g_idx, const c10::optional<at::Tensor>& bias,
                             bool fragment_order, const GemmPlan& plan, at::Tensor& workspace, at::Tensor& y) {
  const int64_t m = x2.size(0);
  if (plan.splits > 1) workspace = at::empty({plan.splits, m, geo.n}, x2.options().dtype(at::kFloat));
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
  p.fragment_order = fragment_order;
  p.m = static_cast<int>(m);
  p.k = static_cast<int>(geo.k);
  p.n = static_cast<int>(geo.n);
  p.blocks_per_cta = static_cast<int>(plan.blocks_per_cta);
  p.y = y.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.bias_type = bias.has_value() ? float_type_of(bias->scalar_type()) : FloatType::kFloat;
  p.workspace = plan.splits > 1 ? workspace.data_ptr<float>() : nullptr;
  return p;
}

// The general path: W^T dequantized to x's dtype, then cuBLAS (with the bias in its epilogue).
at::Tensor dequantize_then_gemm(const core::QuantGeometry& geo, const at::Tensor& x2, const at::Tensor& qweight,
                                const at::Tensor& qzeros, const at::Tensor& scales,
                                const c10::optional<at::Tensor>& g_idx, const c10::optional<at::Tensor>& bias,
                                bool fragment_order) {
  at::Tensor w = at::empty({geo.k, geo.n}, x2.options());
  DequantParams dp = dequant_params(geo, qweight, qzeros, scales, g_idx);
  dp.fragment_order = fragment_order;
  launch_dequantize(dp, static_cast<int>(geo.bits),
                    float_type_of(x2.scalar_type()), w.data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (bias.has_value()) return at::addmm(bias->to(x2.scalar_type()), x2, w);
  return at::mm(x2, w);
}

// Both gemm ops; fragment_order: qweight in fragment order (gemm_fragment_ordered).
at::Tensor gemm_any_order(const char* op, bool fragment_order, const at::Tensor& x, const at::Tensor& qweight,
                          const at::Tensor& qzeros, const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                          const c10::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  if (fragment_order) core::check_fragment_order_bits(op, bits);
  const core::QuantGeometry geo = core::check_quantized_weight(op, qweight, qzeros, scales, g_idx, bits, group_size);
  core::check_activations(op, x, geo, qweight);
  core::check_bias(op, bias, geo, qweight);
  const c10::cuda::CUDAGuard guard(qweight.device());
  check_device_supported(op);

  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = geo.n;
  // A view whenever x's rows can be addressed with one stride (any contiguous or row-sliced x); the kernels
  // need unit stride along K only.
  at::Tensor x2 = x.reshape({-1, geo.k});
  if (x2.stride(1) != 1) x2 = x2.contiguous();
  const int64_t m = x2.size(0);
  if (m == 0) return at::empty(out_shape, x.options());

  GemmProblem problem{};
  problem.m = m;
  problem.k = geo.k;
  problem.n = geo.n;
  problem.half_activations = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  // 16-byte loads of qweight need a 16-byte aligned base (rows are N * 4 bytes, a multiple of 128).
  problem.weight_aligned = reinterpret_cast<uintptr_t>(qweight.data_ptr()) % 16 == 0;
  // The tensor-core kernel copies x in 16-byte pieces: aligned base and a row stride of whole pieces.
  problem.x_aligned = reinterpret_cast<uintptr_t>(x2.data_ptr()) % 16 == 0 && (m == 1 || x2.stride(0) % 8 == 0);
  const DeviceInfo& device = device_info(qweight.device().index());
  problem.mma_available = mma_enabled() && device.major >= 8;
  problem.sms = device.multiprocessors;
  problem.mma_min_rows = mma_min_rows();
  problem.bits = static_cast<int>(geo.bits);
  problem.fragment_order = fragment_order;
  problem.has_g_idx = g_idx.has_value();
  problem.group_size = kernel_group_size(geo);
  problem.scales_aligned = reinterpret_cast<uintptr_t>(scales.data_ptr()) % 16 == 0;
  problem.tensor_core_gemv = gemv_tc_enabled();
  // sm_90a code runs on compute capability 9.0 only; the environment is read only for batches the kernel could take
  // (not on every decode step).
  problem.wgmma_available =
      kWgmmaBuilt && device.major == 9 && device.minor == 0 && m >= kWgmmaMinRows && wgmma_requested();
  const GemmPlan plan = plan_gemm(problem);
  if (plan.path == GemmPath::kDequantizeThenGemm) {
    return dequantize_then_gemm(geo, x2, qweight, qzeros, scales, g_idx, bias, fragment_order).view(out_shape);
  }
  at::Tensor y = at::empty({m, geo.n}, x.options());
  at::Tensor workspace;
  const FusedGemmParams p =
      fused_params(geo, x2, qweight, qzeros, scales, g_idx, bias, fragment_order, plan, workspace, y);
  C10_CUDA_CHECK(launch_fused_gemm(plan, static_cast<int>(geo.bits), p, act_type_of(x2),
                                   c10::cuda::getCurrentCUDAStream()));
  return y.view(out_shape);
}

at::Tensor gemm_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                     const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                     const c10::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  return gemm_any_order("gptq_kernels.gemm", false, x, qweight, qzeros, scales, g_idx, bias, bits, group_size);
}

at::Tensor gemm_fragment_ordered_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                                      const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                                      const c10::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  return gemm_any_order("gptq_kernels.gemm_fragment_ordered", true, x, qweight, qzeros, scales, g_idx, bias, bits,
                        group_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CUDA, m) {
  m.impl("gemm", &gemm_cuda);
  m.impl("gemm_fragment_ordered", &gemm_fragment_ordered_cuda);
}

}  // namespace cuda
}  // namespace gptq_kernels
