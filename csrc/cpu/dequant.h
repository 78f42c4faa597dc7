// Scalar dequantization of a column range of a GPTQ weight into fp32, shared by the CPU `dequantize` op
// and the large-batch path of the CPU `gemm` (which multiplies dequantized tiles with a BLAS GEMM).
#pragma once
#include <ATen/core/Tensor.h>

#include "core/checks.h"

namespace gptq_kernels {
namespace cpu {

// Writes W^T[k, n] for all k and n in [n_begin, n_end) to dst[k * ld + (n - n_begin)].
// n_begin and n_end are multiples of 32. g_idx may be undefined (then g = k / group_size).
void dequantize_columns(const core::QuantGeometry& geometry, const at::Tensor& qweight, const at::Tensor& qzeros,
                        const at::Tensor& scales, const at::Tensor& g_idx, int64_t n_begin, int64_t n_end,
                        float* dst, int64_t ld);

}  // namespace cpu
}  // namespace gptq_kernels
