// CPU implementations of pack, unpack, permute_rows and dequantize, built on the shared bit helpers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "core/bitpack.h"
#include "core/checks.h"
#include "cpu/dequant.h"

namespace gptq_kernels {
namespace cpu {
namespace {

// Blocks of 32 rows are independent, so every op parallelises over blocks (pack/unpack) or columns.
constexpr int64_t kGrainBlocks = 16;

at::Tensor pack_cpu(const at::Tensor& values, int64_t bits) {
  constexpr const char* op = "gptq_kernels.pack";
  core::check_pack_values(op, values, bits);
  const int64_t k = values.size(0), n = values.size(1);
  const at::Tensor v = values.contiguous();
  const int32_t* src = v.data_ptr<int32_t>();
  const int32_t limit = 1 << bits;
  for (int64_t i = 0; i < v.numel(); ++i) {
    TORCH_CHECK(src[i] >= 0 && src[i] < limit, op, ": values must lie in [0, ", limit, ") for ", bits,
                "-bit packing, got ", src[i], " at row ", i / n, ", column ", i % n);
  }
  at::Tensor packed = at::zeros({k / 32 * bits, n}, values.options().dtype(at::kInt));
  auto* dst = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
  at::parallel_for(0, k / 32, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      uint32_t* block = dst + b * bits * n;
      for (int j = 0; j < core::kBlockValues; ++j) {
        const int32_t* row = src + (b * 32 + j) * n;
        for (int64_t col = 0; col < n; ++col) {
          core::insert(block + col, n, j, static_cast<int>(bits), static_cast<uint32_t>(row[col]));
        }
      }
    }
  });
  return packed;
}

at::Tensor unpack_cpu(const at::Tensor& packed, int64_t bits) {
  constexpr const char* op = "gptq_kernels.unpack";
  core::check_packed(op, packed, bits);
  const int64_t rows = packed.size(0), n = packed.size(1);
  const at::Tensor p = packed.contiguous();
  const auto* src = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
  at::Tensor values = at::empty({rows / bits * 32, n}, packed.options());
  int32_t* dst = values.data_ptr<int32_t>();
  at::parallel_for(0, rows / bits, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint32_t* block = src + b * bits * n;
      for (int j = 0; j < core::kBlockValues; ++j) {
        int32_t* row = dst + (b * 32 + j) * n;
        for (int64_t col = 0; col < n; ++col) {
          row[col] = static_cast<int32_t>(core::extract(block + col, n, j, static_cast<int>(bits)));
        }
      }
    }
  });
  return values;
}

at::Tensor permute_rows_cpu(const at::Tensor& packed, const at::Tensor& perm, int64_t bits) {
  constexpr const char* op = "gptq_kernels.permute_rows";
  core::check_permute_rows_args(op, packed, perm, bits);
  core::check_permutation_values(op, perm);
  const int64_t rows = packed.size(0), n = packed.size(1), k = rows / bits * 32;
  const at::Tensor p = packed.contiguous(), index = perm.contiguous();
  const auto* src = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
  const int64_t* rows_of = index.data_ptr<int64_t>();
  at::Tensor out = at::empty_like(p);
  auto* dst = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  at::parallel_for(0, k / 32, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    uint32_t words[8];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t col = 0; col < n; ++col) {
        core::gather_block(src + col, n, k, rows_of + b * 32, static_cast<int>(bits), words);
        for (int64_t i = 0; i < bits; ++i) dst[(b * bits + i) * n + col] = words[i];
      }
    }
  });
  return out;
}

template <typename T>
void dequantize_columns_typed(const core::QuantGeometry& geo, const uint32_t* qweight, const uint32_t* qzeros,
                              const T* scales, const int32_t* g_idx, int64_t n_begin, int64_t n_end, float* dst,
                              int64_t ld) {
  const int bits = static_cast<int>(geo.bits);
  const int64_t n = geo.n, zero_row_words = n * bits / 32, width = n_end - n_begin;
  // Per-group zeros and scales of this column range, decoded once: G * width floats.
  std::vector<float> scale(geo.groups * width), zero(geo.groups * width);
  for (int64_t g = 0; g < geo.groups; ++g) {
    for (int64_t col = n_begin; col < n_end; ++col) {
      scale[g * width + col - n_begin] = static_cast<float>(scales[g * n + col]);
      zero[g * width + col - n_begin] = static_cast<float>(core::zero_point(qzeros + g * zero_row_words, col, bits));
    }
  }
  for (int64_t b = 0; b < geo.k / 32; ++b) {
    const uint32_t* block = qweight + b * bits * n;
    for (int j = 0; j < core::kBlockValues; ++j) {
      const int64_t k = b * 32 + j;
      const int64_t g = g_idx ? g_idx[k] : core::group_of(k, geo.group_size);
      const float* s = scale.data() + g * width;
      const float* z = zero.data() + g * width;
      float* out = dst + k * ld;
      for (int64_t col = n_begin; col < n_end; ++col) {
        const float q = static_cast<float>(core::extract(block + col, n, j, bits));
        out[col - n_begin] = s[col - n_begin] * (q - z[col - n_begin]);
      }
    }
  }
}

at::Tensor dequantize_cpu(const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales,
                          const c10::optional<at::Tensor>& g_idx, int64_t bits, int64_t group_size) {
  constexpr const char* op = "gptq_kernels.dequantize";
  const core::QuantGeometry geo =
      core::check_quantized_weight(op, qweight, qzeros, scales, g_idx, bits, group_size);
  if (g_idx.has_value()) core::check_group_index_values(op, *g_idx, geo.groups);
  at::Tensor out = at::empty({geo.k, geo.n}, scales.options().dtype(at::kFloat));
  at::parallel_for(0, geo.n / 32, 1, [&](int64_t t0, int64_t t1) {
    dequantize_columns(geo, qweight, qzeros, scales, g_idx.has_value() ? *g_idx : at::Tensor(), t0 * 32, t1 * 32,
                       out.data_ptr<float>() + t0 * 32, geo.n);
  });
  return out.to(scales.scalar_type());
}

}  // namespace

void dequantize_columns(const core::QuantGeometry& geometry, const at::Tensor& qweight, const at::Tensor& qzeros,
                        const at::Tensor& scales, const at::Tensor& g_idx, int64_t n_begin, int64_t n_end,
                        float* dst, int64_t ld) {
  const auto* qw = reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>());
  const auto* qz = reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>());
  const int32_t* gi = g_idx.defined() ? g_idx.data_ptr<int32_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scales.scalar_type(), "dequantize_columns", [&] {
    dequantize_columns_typed<scalar_t>(geometry, qw, qz, scales.data_ptr<scalar_t>(), gi, n_begin, n_end, dst, ld);
  });
}

TORCH_LIBRARY_IMPL(gptq_kernels, CPU, m) {
  m.impl("pack", &pack_cpu);
  m.impl("unpack", &unpack_cpu);
  m.impl("permute_rows", &permute_rows_cpu);
  m.impl("dequantize", &dequantize_cpu);
}

}  // namespace cpu
}  // namespace gptq_kernels
