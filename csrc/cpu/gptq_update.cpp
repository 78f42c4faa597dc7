// CPU implementation of gptq_block: the inner column loop of blocked GPTQ for one block of columns.
//
// Each row of the weight is quantized independently (the Hessian couples columns, never rows), so the op
// parallelises over groups of rows that the kernel (cpu/gptq_block_tile.h, one variant per instruction set)
// processes side by side. The update of the columns after the block (a GEMM) is left to the caller.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "core/checks.h"
#include "cpu/gptq_block.h"
#include "cpu/isa.h"

namespace gptq_kernels {
namespace cpu {
namespace {

// The scale as the checkpoint will hold it: clamped to the dtype's smallest normal, then rounded to it.
template <typename T>
float round_scale(float scale) {
  const float tiny = static_cast<float>(std::numeric_limits<T>::min());
  return static_cast<float>(static_cast<T>(std::max(scale, tiny)));
}

// The variant for the instruction set cpu/isa.h selects.
GptqBlockKernel select_gptq_block_kernel() {
  switch (selected_cpu_isa()) {
#if defined(GPTQ_KERNELS_X86)
    case CpuIsa::kAvx512Bf16:  // no bf16 arithmetic here: the avx512 variant
    case CpuIsa::kAvx512: return gptq_block_kernel_avx512();
    case CpuIsa::kAvx2: return gptq_block_kernel_avx2();
#endif
    default: return gptq_block_kernel_generic();
  }
}

ScaleRounding scale_rounding(const char* op, at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return round_scale<c10::Half>;
    case at::kBFloat16: return round_scale<c10::BFloat16>;
    case at::kFloat: return round_scale<float>;
    default:
      TORCH_CHECK(false, op, ": scale_dtype must be float16, bfloat16 or float32, got ", dtype);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gptq_block_cpu(
    const at::Tensor& weight, const at::Tensor& hinv, int64_t bits, bool sym, int64_t group_size,
    int64_t column_offset, const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& zero,
    at::ScalarType scale_dtype) {
  constexpr const char* op = "gptq_kernels.gptq_block";
  const bool fit = core::check_gptq_block_args(op, weight, hinv, bits, group_size, column_offset, scale, zero);
  TORCH_CHECK(weight.device().is_cpu(), op, ": expected CPU tensors here, got ", weight.device());
  const int64_t rows = weight.size(0), width = weight.size(1);
  const ScaleRounding rounding = scale_rounding(op, scale_dtype);

  const at::Tensor w = weight.contiguous();  // read once into each group's transposed working copy
  const at::Tensor u = hinv.contiguous();
  at::Tensor q = at::empty({rows, width}, weight.options().dtype(at::kInt));
  at::Tensor deq = at::empty({rows, width}, weight.options());
  at::Tensor err = at::empty({rows, width}, weight.options());
  at::Tensor scale_out = fit ? at::empty({rows, width}, weight.options()) : scale->contiguous().clone();
  at::Tensor zero_out = fit ? at::empty({rows, width}, weight.options()) : zero->contiguous().clone();

  static const GptqBlockKernel kernel = select_gptq_block_kernel();
  const GptqBlockProblem problem{w.data_ptr<float>(), u.data_ptr<float>(), rows, width, static_cast<int>(bits),
                                 sym, fit, group_size, column_offset, rounding, q.data_ptr<int32_t>(),
                                 deq.data_ptr<float>(), err.data_ptr<float>(), scale_out.data_ptr<float>(),
                                 zero_out.data_ptr<float>()};
  const int64_t groups = (rows + kernel.rows_per_group - 1) / kernel.rows_per_group;
  // A group of rows is rows_per_group * width^2 / 2 multiply-subtracts (100k to 500k in a 128-column block):
  // enough work per task.
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> workspace(static_cast<size_t>(kernel.workspace_floats(width)));
    kernel.rows(problem, g0 * kernel.rows_per_group, std::min(rows, g1 * kernel.rows_per_group),
                workspace.data());
  });
  return {q, deq, err, scale_out, zero_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CPU, m) { m.impl("gptq_block", &gptq_block_cpu); }

}  // namespace cpu
}  // namespace gptq_kernels
