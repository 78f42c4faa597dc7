#include "core/checks.h"

#include <vector>

#include <c10/util/Exception.h>

#include "core/bitpack.h"
#include "core/fragment_order.h"

namespace gptq_kernels {
namespace core {
namespace {

bool is_float_type(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat;
}

void check_2d_contiguous(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous() on it)");
}

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& qweight) {
  TORCH_CHECK(t.device() == qweight.device(), op, ": ", name, " is on ", t.device(),
              " but qweight is on ", qweight.device());
}

}  // namespace

void check_bits(const char* op, int64_t bits) {
  TORCH_CHECK(is_supported_bits(bits), op, ": bits must be 2, 3, 4 or 8, got ", bits);
}

void check_group_size(const char* op, int64_t group_size) {
  TORCH_CHECK(group_size == -1 || group_size > 0, op,
              ": group_size must be -1 (one group per output channel) or positive, got ", group_size);
}

QuantGeometry check_quantized_weight(const char* op, const at::Tensor& qweight, const at::Tensor& qzeros,
                                     const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                                     int64_t bits, int64_t group_size) {
  check_bits(op, bits);
  check_group_size(op, group_size);
  check_2d_contiguous(op, "qweight", qweight, at::kInt);
  const int64_t rows = qweight.size(0), n = qweight.size(1);
  TORCH_CHECK(rows > 0 && rows % bits == 0, op, ": qweight has ", rows, " rows, but a ", bits,
              "-bit qweight has K*", bits, "/32 rows with K a positive multiple of 32");
  const int64_t k = rows / bits * kBlockValues;
  TORCH_CHECK(n > 0 && n % 32 == 0, op, ": the number of output features N = qweight.size(1) = ", n,
              " must be a positive multiple of 32");
  const int64_t groups = num_groups(k, group_size);

  check_2d_contiguous(op, "qzeros", qzeros, at::kInt);
  check_same_device(op, "qzeros", qzeros, qweight);
  TORCH_CHECK(qzeros.size(0) == groups && qzeros.size(1) == n * bits / 32, op, ": qzeros must have shape [",
              groups, ", ", n * bits / 32, "] (G = ceil(K=", k, " / group_size=", group_size,
              "), N*bits/32), got ", qzeros.sizes());

  TORCH_CHECK(is_float_type(scales.scalar_type()), op,
              ": scales must be float16, bfloat16 or float32, got ", scales.scalar_type());
  TORCH_CHECK(scales.dim() == 2, op, ": scales must be 2-D, got shape ", scales.sizes());
  TORCH_CHECK(scales.is_contiguous(), op, ": scales must be contiguous (call .contiguous() on it)");
  check_same_device(op, "scales", scales, qweight);
  TORCH_CHECK(scales.size(0) == groups && scales.size(1) == n, op, ": scales must have shape [", groups,
              ", ", n, "] (G = ceil(K=", k, " / group_size=", group_size, "), N), got ", scales.sizes());

  if (g_idx.has_value()) {
    const at::Tensor& gi = *g_idx;
    TORCH_CHECK(gi.scalar_type() == at::kInt, op, ": g_idx must be int32, got ", gi.scalar_type());
    TORCH_CHECK(gi.dim() == 1 && gi.size(0) == k, op, ": g_idx must have shape [K=", k, "], got ",
                gi.sizes());
    TORCH_CHECK(gi.is_contiguous(), op, ": g_idx must be contiguous (call .contiguous() on it)");
    check_same_device(op, "g_idx", gi, qweight);
  }
  return QuantGeometry{k, n, groups, bits, group_size};
}

void check_activations(const char* op, const at::Tensor& x, const QuantGeometry& geometry,
                       const at::Tensor& qweight) {
  TORCH_CHECK(is_float_type(x.scalar_type()), op, ": x must be float16, bfloat16 or float32, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  TORCH_CHECK(x.size(-1) == geometry.k, op, ": x has ", x.size(-1), " features in its last dimension, but ",
              "the quantized weight has K = ", geometry.k, " input features");
  check_same_device(op, "x", x, qweight);
}

void check_bias(const char* op, const c10::optional<at::Tensor>& bias, const QuantGeometry& geometry,
                const at::Tensor& qweight) {
  if (!bias.has_value()) return;
  const at::Tensor& b = *bias;
  TORCH_CHECK(is_float_type(b.scalar_type()), op, ": bias must be float16, bfloat16 or float32, got ",
              b.scalar_type());
  TORCH_CHECK(b.dim() == 1 && b.size(0) == geometry.n, op, ": bias must have shape [N=", geometry.n,
              "], got ", b.sizes());
  check_same_device(op, "bias", b, qweight);
}

namespace {

void check_int32_matrix(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kInt, op, ": ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D, got shape ", t.sizes());
}

}  // namespace

void check_pack_values(const char* op, const at::Tensor& values, int64_t bits) {
  check_bits(op, bits);
  check_int32_matrix(op, "values", values);
  TORCH_CHECK(values.size(0) % kBlockValues == 0, op, ": values.size(0) = ", values.size(0),
              " must be a multiple of 32");
}

void check_packed(const char* op, const at::Tensor& packed, int64_t bits) {
  check_bits(op, bits);
  check_int32_matrix(op, "packed", packed);
  TORCH_CHECK(packed.size(0) % bits == 0, op, ": packed.size(0) = ", packed.size(0),
              " must be a multiple of bits = ", bits, " (32 values fill `bits` words)");
}

void check_fragment_order_bits(const char* op, int64_t bits) {
  check_bits(op, bits);
  TORCH_CHECK(has_fragment_order(bits), op, ": fragment order exists for 2- and 4-bit weights only, got bits = ",
              bits, " (3- and 8-bit layers keep the checkpoint order)");
}

void check_permute_rows_args(const char* op, const at::Tensor& packed, const at::Tensor& perm, int64_t bits) {
  check_packed(op, packed, bits);
  const int64_t k = packed.size(0) / bits * 32;
  TORCH_CHECK(perm.device() == packed.device(), op, ": perm is on ", perm.device(), " but packed is on ",
              packed.device());
  TORCH_CHECK(perm.scalar_type() == at::kLong, op, ": perm must be int64 (as torch.argsort returns), got ",
              perm.scalar_type());
  TORCH_CHECK(perm.dim() == 1 && perm.size(0) == k, op, ": perm must have shape [", k, "] (one entry per row "
              "of the unpacked [K, N] matrix, K = packed.size(0) / bits * 32), got ", perm.sizes());
}

void check_permutation_values(const char* op, const at::Tensor& perm) {
  const at::Tensor p = perm.contiguous();
  const int64_t* index = p.data_ptr<int64_t>();
  const int64_t k = p.numel();
  std::vector<bool> seen(static_cast<size_t>(k), false);
  for (int64_t i = 0; i < k; ++i) {
    TORCH_CHECK(index[i] >= 0 && index[i] < k, op, ": perm[", i, "] = ", index[i], " is not a row index in [0, ",
                k, ")");
    TORCH_CHECK(!seen[index[i]], op, ": perm is not a permutation: row ", index[i], " appears twice");
    seen[index[i]] = true;
  }
}

void check_group_index_values(const char* op, const at::Tensor& g_idx, int64_t groups) {
  const int32_t* g = g_idx.data_ptr<int32_t>();
  for (int64_t i = 0; i < g_idx.numel(); ++i) {
    TORCH_CHECK(g[i] >= 0 && g[i] < groups, op, ": g_idx[", i, "] = ", g[i], " is not a group index in [0, ",
                groups, ")");
  }
}

namespace {
void check_float_matrix(const char* op, const char* name, const at::Tensor& t, const at::Tensor& weight,
                        int64_t rows, int64_t cols) {
  TORCH_CHECK(t.device() == weight.device(), op, ": ", name, " is on ", t.device(), " but weight is on ",
              weight.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": ", name, " must have shape [",
              rows, ", ", cols, "], got ", t.sizes());
}
}  // namespace

bool check_gptq_block_args(const char* op, const at::Tensor& weight, const at::Tensor& hinv, int64_t bits,
                           int64_t group_size, int64_t column_offset, const c10::optional<at::Tensor>& scale,
                           const c10::optional<at::Tensor>& zero) {
  check_bits(op, bits);
  check_group_size(op, group_size);
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [rows, B], got shape ", weight.sizes());
  const int64_t rows = weight.size(0), width = weight.size(1);
  check_float_matrix(op, "weight", weight, weight, rows, width);
  check_float_matrix(op, "hinv", hinv, weight, width, width);
  TORCH_CHECK(scale.has_value() == zero.has_value(), op,
              ": pass both scale and zero (precomputed grids) or neither (grids fitted here)");
  const bool fit = !scale.has_value();
  if (fit) {
    TORCH_CHECK(group_size > 0, op, ": with group_size = -1 the grid spans the whole matrix and must be ",
                "passed as scale and zero");
    TORCH_CHECK(column_offset >= 0 && column_offset % group_size == 0, op, ": column_offset = ",
                column_offset, " must be a multiple of group_size = ", group_size,
                " when the grids are fitted here (a block must start a group)");
  } else {
    check_float_matrix(op, "scale", *scale, weight, rows, width);
    check_float_matrix(op, "zero", *zero, weight, rows, width);
  }
  return fit;
}

}  // namespace core
}  // namespace gptq_kernels
