// Input validation of the BCQ ops (bcq_dequantize, bcq_gemm), shared by the CPU and CUDA implementations.
// Messages name the op, the argument, what it got and what was expected, like core/checks.h.
#pragma once
#include <ATen/core/Tensor.h>

#include "core/checks.h"

namespace gptq_kernels {
namespace core {

// The shape of one binary-coded weight, derived from (and checked against) its tensors.
struct BcqGeometry {
  int64_t planes;
  int64_t k;           // input features
  int64_t n;           // output features
  int64_t groups;      // ceil(K / group_size), or 1 when group_size == -1
  int64_t group_size;  // -1 means one group
  // As a QuantGeometry, to reuse check_activations / check_bias (which read k and n only).
  QuantGeometry as_quant() const { return QuantGeometry{k, n, groups, planes, group_size}; }
};

// qplanes int32 [planes, K/32, N] with 1 <= planes <= 8, N a positive multiple of 32; alpha [G, planes, N] and
// offset [G, N] of float16/bfloat16/float32; all contiguous and on one device. Reads no tensor values.
BcqGeometry check_bcq_weight(const char* op, const at::Tensor& qplanes, const at::Tensor& alpha,
                             const at::Tensor& offset, int64_t group_size);

// x [..., K] of float16/bfloat16/float32 and bias [N] of a float type (or None), both on qplanes' device: the
// checks of core/checks.h, with device messages that name qplanes.
void check_bcq_inputs(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                      const BcqGeometry& geometry, const at::Tensor& qplanes);

}  // namespace core
}  // namespace gptq_kernels
