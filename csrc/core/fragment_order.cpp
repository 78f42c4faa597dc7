// to_fragment_order / from_fragment_order for every device: a row permutation (core/fragment_order.h) applied
// with the device's permute_rows kernel. Registered as composite ops, so autograd and torch.compile see the
// permute_rows call underneath.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "core/checks.h"
#include "core/fragment_order.h"

namespace gptq_kernels {
namespace core {
namespace {

at::Tensor reorder(const char* op, const at::Tensor& qweight, int64_t bits, bool inverse) {
  check_fragment_order_bits(op, bits);
  check_packed(op, qweight, bits);
  const int64_t k = qweight.size(0) / bits * kBlockValues;
  at::Tensor perm = at::empty({k}, at::TensorOptions().dtype(at::kLong));
  fragment_order_permutation(k, inverse, perm.data_ptr<int64_t>());
  static const auto permute_rows = c10::Dispatcher::singleton()
                                       .findSchemaOrThrow("gptq_kernels::permute_rows", "")
                                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return permute_rows.call(qweight, perm.to(qweight.device()), bits);
}

at::Tensor to_fragment_order(const at::Tensor& qweight, int64_t bits) {
  return reorder("gptq_kernels.to_fragment_order", qweight, bits, false);
}
at::Tensor from_fragment_order(const at::Tensor& qweight, int64_t bits) {
  return reorder("gptq_kernels.from_fragment_order", qweight, bits, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CompositeImplicitAutograd, m) {
  m.impl("to_fragment_order", &to_fragment_order);
  m.impl("from_fragment_order", &from_fragment_order);
}

}  // namespace core
}  // namespace gptq_kernels
