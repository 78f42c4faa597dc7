// The CUDA gptq_block op: argument checks, the transposed working copies and the results; the kernel and its
// work split are in gptq_block_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "core/checks.h"
#include "cuda/device_support.h"
#include "cuda/gptq_block.cuh"

namespace gptq_kernels {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gptq_block_cuda(
    const at::Tensor& weight, const at::Tensor& hinv, int64_t bits, bool sym, int64_t group_size,
    int64_t column_offset, const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& zero,
    at::ScalarType scale_dtype) {
  constexpr const char* op = "gptq_kernels.gptq_block";
  const bool fit = core::check_gptq_block_args(op, weight, hinv, bits, group_size, column_offset, scale, zero);
  TORCH_CHECK(weight.is_cuda(), op, ": expected CUDA tensors here, got ", weight.device());
  TORCH_CHECK(scale_dtype == at::kHalf || scale_dtype == at::kBFloat16 || scale_dtype == at::kFloat, op,
              ": scale_dtype must be float16, bfloat16 or float32, got ", scale_dtype);
  const int64_t rows = weight.size(0), width = weight.size(1);
  const c10::cuda::CUDAGuard guard(weight.device());
  check_device_supported(op);
  // Transposed working copies ([B, rows]); the results are transposed back at the end.
  at::Tensor w = weight.t().contiguous();
  const at::Tensor u = hinv.contiguous();
  at::Tensor q = at::empty({width, rows}, weight.options().dtype(at::kInt));
  at::Tensor deq = at::empty({width, rows}, weight.options());
  at::Tensor err = at::empty({width, rows}, weight.options());
  at::Tensor scale_t = fit ? at::empty({width, rows}, weight.options()) : scale->t().contiguous();
  at::Tensor zero_t = fit ? at::empty({width, rows}, weight.options()) : zero->t().contiguous();
  auto transposed_back = [](const at::Tensor& t) { return t.t().contiguous(); };
  if (rows > 0 && width > 0) {
    const GptqBlockParams p{w.data_ptr<float>(), u.data_ptr<float>(), q.data_ptr<int32_t>(), deq.data_ptr<float>(),
                            err.data_ptr<float>(), scale_t.data_ptr<float>(), zero_t.data_ptr<float>(), rows,
                            static_cast<int>(width), static_cast<int>(bits), sym, fit, fit ? group_size : 1,
                            column_offset};
    const ScaleKind kind = scale_dtype == at::kHalf       ? ScaleKind::kHalf
                           : scale_dtype == at::kBFloat16 ? ScaleKind::kBFloat16
                                                          : ScaleKind::kFloat;
    launch_gptq_block(p, kind, c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {transposed_back(q), transposed_back(deq), transposed_back(err), transposed_back(scale_t),
          transposed_back(zero_t)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CUDA, m) { m.impl("gptq_block", &gptq_block_cuda); }

}  // namespace cuda
}  // namespace gptq_kernels
