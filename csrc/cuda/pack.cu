// CUDA pack, unpack, permute_rows and dequantize: the layout ops (kernels in layout_kernels.cu). Inputs are checked by the
// same code as on the CPU (core/checks.h), without reading any tensor value, so nothing here waits for the GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "core/bitpack.h"
#include "core/checks.h"
#include "cuda/device_support.h"
#include "cuda/layout.cuh"
#include "cuda/torch_types.h"

namespace gptq_kernels {
namespace cuda {
namespace {

// Unlike the CPU op, values outside [0, 2^bits) are not reported (that would need them on the host): only their
// low `bits` bits are stored.
at::Tensor pack_cuda(const at::Tensor& values, int64_t bits) {
  constexpr const char* op = "gptq_kernels.pack";
  core::check_pack_values(op, values, bits);
  const int64_t k = values.size(0), n = values.size(1);
  const c10::cuda::CUDAGuard guard(values.device());
  check_device_supported(op);
  const at::Tensor v = values.contiguous();
  at::Tensor packed = at::empty({k / 32 * bits, n}, v.options());
  if (packed.numel() == 0) return packed;
  launch_pack(v.data_ptr<int32_t>(), reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>()), k, n,
              static_cast<int>(bits), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return packed;
}

at::Tensor unpack_cuda(const at::Tensor& packed, int64_t bits) {
  constexpr const char* op = "gptq_kernels.unpack";
  core::check_packed(op, packed, bits);
  const int64_t rows = packed.size(0), n = packed.size(1);
  const c10::cuda::CUDAGuard guard(packed.device());
  check_device_supported(op);
  const at::Tensor p = packed.contiguous();
  const int64_t k = rows / bits * 32;
  at::Tensor values = at::empty({k, n}, p.options());
  if (values.numel() == 0) return values;
  launch_unpack(reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>()), values.data_ptr<int32_t>(), k, n,
                static_cast<int>(bits), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return values;
}

// perm is not checked to be a permutation (that would need it on the host): out-of-range entries are clamped.
at::Tensor permute_rows_cuda(const at::Tensor& packed, const at::Tensor& perm, int64_t bits) {
  constexpr const char* op = "gptq_kernels.permute_rows";
  core::check_permute_rows_args(op, packed, perm, bits);
  const int64_t rows = packed.size(0), n = packed.size(1), k = rows / bits * 32;
  const c10::cuda::CUDAGuard guard(packed.device());
  check_device_supported(op);
  const at::Tensor p = packed.contiguous(), index = perm.contiguous();
  at::Tensor out = at::empty_like(p);
  if (out.numel() == 0) return out;
  launch_permute_rows(reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>()), index.data_ptr<int64_t>(),
                      reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()), k, n, static_cast<int>(bits),
                      c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// g_idx entries are not range-checked here (the CPU op does it on the host); see group_at in common.cuh.
at::Tensor dequantize_cuda(const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales,
                           const c10::optional<at::Tensor>& g_idx, int64_t bits, int64_t group_size) {
  constexpr const char* op = "gptq_kernels.dequantize";
  const core::QuantGeometry geo = core::check_quantized_weight(op, qweight, qzeros, scales, g_idx, bits, group_size);
  const c10::cuda::CUDAGuard guard(qweight.device());
  check_device_supported(op);
  at::Tensor out = at::empty({geo.k, geo.n}, scales.options());
  launch_dequantize(dequant_params(geo, qweight, qzeros, scales, g_idx), static_cast<int>(bits),
                    float_type_of(scales.scalar_type()), out.data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CUDA, m) {
  m.impl("pack", &pack_cuda);
  m.impl("unpack", &unpack_cuda);
  m.impl("permute_rows", &permute_rows_cuda);
  m.impl("dequantize", &dequantize_cuda);
}

}  // namespace cuda
}  // namespace gptq_kernels
