#include "core/bcq_checks.h"

#include <c10/util/Exception.h>

#include "core/bcq.h"

namespace gptq_kernels {
namespace core {

// The bit helpers of core/bcq.h, checked at compile time (the CUDA kernels use the same functions).
static_assert(plane_nibble(0x87654321u, 0) == 0x1 && plane_nibble(0x87654321u, 7) == 0x8, "nibble q = bits 4q..4q+3");
static_assert(plane_byte(0x87654321u, 1) == 0x43 && plane_bits(0xC0000000u, 30, 3) == 0x3, "byte b = bits 8b..8b+7");
static_assert(plane_sign(0x20u, 5) == 1.0f && plane_sign(0x20u, 4) == -1.0f, "bit 1 means +1, 0 means -1");
static_assert(plane_sign_mask(0x1u, 0) == 0u && plane_sign_mask(0x1u, 31) == 0x80000000u, "mask negates for bit 0");
static_assert(bcq_groups_align_to_blocks(576, 128) && bcq_groups_align_to_blocks(576, 1000) &&
                  !bcq_groups_align_to_blocks(576, 48) && bcq_block_group(5, 64) == 2,
              "groups on 32-input block boundaries");

namespace {

void check_float_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& qplanes) {
  const at::ScalarType s = t.scalar_type();
  TORCH_CHECK(s == at::kHalf || s == at::kBFloat16 || s == at::kFloat, op, ": ", name,
              " must be float16, bfloat16 or float32, got ", s);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous() on it)");
  TORCH_CHECK(t.device() == qplanes.device(), op, ": ", name, " is on ", t.device(), " but qplanes is on ",
              qplanes.device());
}

}  // namespace

BcqGeometry check_bcq_weight(const char* op, const at::Tensor& qplanes, const at::Tensor& alpha,
                             const at::Tensor& offset, int64_t group_size) {
  check_group_size(op, group_size);
  TORCH_CHECK(qplanes.scalar_type() == at::kInt, op, ": qplanes must be int32, got ", qplanes.scalar_type());
  TORCH_CHECK(qplanes.dim() == 3, op, ": qplanes must be 3-D [planes, K/32, N], got shape ", qplanes.sizes());
  TORCH_CHECK(qplanes.is_contiguous(), op, ": qplanes must be contiguous (call .contiguous() on it)");
  const int64_t planes = qplanes.size(0), words = qplanes.size(1), n = qplanes.size(2);
  TORCH_CHECK(planes >= 1 && planes <= kBcqMaxPlanes, op, ": qplanes has ", planes, " planes (size(0)), expected 1 to ",
              kBcqMaxPlanes);
  TORCH_CHECK(words > 0, op, ": qplanes.size(1) = K/32 must be positive, got ", words);
  TORCH_CHECK(n > 0 && n % 32 == 0, op, ": the number of output features N = qplanes.size(2) = ", n,
              " must be a positive multiple of 32");
  const int64_t k = words * kBlockValues;
  const int64_t groups = num_groups(k, group_size);

  check_float_tensor(op, "alpha", alpha, qplanes);
  TORCH_CHECK(alpha.dim() == 3 && alpha.size(0) == groups && alpha.size(1) == planes && alpha.size(2) == n, op,
              ": alpha must have shape [", groups, ", ", planes, ", ", n, "] (G = ceil(K=", k, " / group_size=",
              group_size, "), planes, N), got ", alpha.sizes());
  check_float_tensor(op, "offset", offset, qplanes);
  TORCH_CHECK(offset.dim() == 2 && offset.size(0) == groups && offset.size(1) == n, op,
              ": offset must have shape [", groups, ", ", n, "] (G = ceil(K=", k, " / group_size=", group_size,
              "), N), got ", offset.sizes());
  return BcqGeometry{planes, k, n, groups, group_size};
}

void check_bcq_inputs(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                      const BcqGeometry& geometry, const at::Tensor& qplanes) {
  TORCH_CHECK(x.device() == qplanes.device(), op, ": x is on ", x.device(), " but qplanes is on ", qplanes.device());
  check_activations(op, x, geometry.as_quant(), qplanes);
  if (bias.has_value()) {
    TORCH_CHECK(bias->device() == qplanes.device(), op, ": bias is on ", bias->device(), " but qplanes is on ",
                qplanes.device());
  }
  check_bias(op, bias, geometry.as_quant(), qplanes);
}

}  // namespace core
}  // namespace gptq_kernels
