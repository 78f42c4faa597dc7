// CPU `gemm`: y = x @ W^T + bias with W in the GPTQ layout.
//
// Two paths:
//  * up to fused_max_rows() rows (128 with AVX2, 256 with AVX-512) and groups that do not split a 32-row block:
//    the fused kernel of cpu/gemv_tile.h, which reads each packed weight once and never forms the dequantized
//    matrix (for bf16 activations on CPUs with AVX512_BF16, its vdpbf16ps variant: cpu/bf16_pairs.h);
//  * otherwise (large batches, or act-order g_idx that has not been reordered): dequantize a tile of
//    columns to fp32 and multiply it with a library GEMM, whose speed a hand-written kernel would not beat:
//    oneDNN's on AVX-512 CPUs (torch's MKL runs its AVX2 code on AMD ones, at well under half the speed),
//    at::mm elsewhere; bf16 activations on AVX512_BF16 CPUs multiply a bf16 copy of the tile.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "core/bitpack.h"
#include "core/checks.h"
#include "cpu/bf16_pairs.h"
#include "cpu/dequant.h"
#include "cpu/gemv.h"
#include "cpu/isa.h"

namespace gptq_kernels {
namespace cpu {
namespace {

// Above this many rows, decoding the weights once per row band costs more than dequantize + GEMM. Measured at
// 4096 x 11008 on two AMD EPYC cores: with AVX2 the fused kernel took 22, 42, 82 and 167 ms at 33, 64, 128 and
// 256 rows against 42, 57 and 90 ms for dequantize + MKL up to 128 rows and 164 ms for the float GEMM alone at 256;
// with AVX-512 it still ran 2.2 to 4.3 times as fast as dequantize + oneDNN at 128 rows and faster at 256 (the
// dequantization itself, not the GEMM, is then most of the other path's time). The scalar kernel stops early.
int64_t fused_max_rows() {
  const CpuIsa isa = selected_cpu_isa();
  return isa >= CpuIsa::kAvx512 ? 256 : isa == CpuIsa::kAvx2 ? 128 : 32;
}
// Columns per dequantized tile of the large-batch path: K * tile width floats stay within this many bytes.
constexpr int64_t kDequantTileBytes = int64_t{8} << 20;

// The fused kernels for the instruction-set level cpu/isa.h selects: one for fp32 activations (fp16 ones are
// converted to fp32) and one for bf16 activations, which at the avx512bf16 level is the vdpbf16ps kernel.
struct FusedKernels {
  const GemvKernel* fp32;
  const GemvKernel* bf16;
};

FusedKernels select_fused_kernels() {
  switch (selected_cpu_isa()) {
#if defined(GPTQ_KERNELS_X86)
    case CpuIsa::kAvx512Bf16: return {&kGemvAvx512, &kGemvAvx512Bf16};
    case CpuIsa::kAvx512: return {&kGemvAvx512, &kGemvAvx512};
    case CpuIsa::kAvx2: return {&kGemvAvx2, &kGemvAvx2};
#endif
    default: return {&kGemvGeneric, &kGemvGeneric};
  }
}

// Runs of 32-row blocks that share one group, or false when some block mixes groups.
struct Segments {
  std::vector<int64_t> begin;  // in blocks; begin.back() == number of blocks
  std::vector<int64_t> group;
};

bool block_segments(const core::QuantGeometry& geo, const int32_t* g_idx, Segments& out) {
  const int64_t blocks = geo.k / core::kBlockValues;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * core::kBlockValues;
    auto group_of = [&](int64_t k) { return g_idx ? int64_t{g_idx[k]} : core::group_of(k, geo.group_size); };
    const int64_t g = group_of(k0);
    if (g_idx) {
      for (int64_t k = k0 + 1; k < k0 + core::kBlockValues; ++k) {
        if (g_idx[k] != g) return false;
      }
    } else if (group_of(k0 + core::kBlockValues - 1) != g) {  // k / group_size never decreases: the ends decide
      return false;
    }
    if (out.group.empty() || out.group.back() != g) {
      out.begin.push_back(b);
      out.group.push_back(g);
    }
  }
  out.begin.push_back(blocks);
  return true;
}

ScaleType scale_type_of(const at::Tensor& scales) {
  switch (scales.scalar_type()) {
    case at::kHalf: return ScaleType::kHalf;
    case at::kBFloat16: return ScaleType::kBFloat16;
    default: return ScaleType::kFloat;
  }
}

// Calls f(m0, rows) for each row band of band_rows rows (the last one may be shorter): the activation layout of
// GemvProblem, where the band of rows [m0, m0 + rows) stores position i of row m0 + r at i * rows + r.
template <class F>
void for_each_band(int64_t m, int band_rows, F&& f) {
  for (int64_t m0 = 0; m0 < m; m0 += band_rows) f(m0, std::min<int64_t>(band_rows, m - m0));
}

// Sum of n floats (a multiple of 8) in double, over independent partial sums so that the additions do not wait
// on one another: at batch 16 a single chain of them took longer than the fp32 kernel's arithmetic on one tile row.
double sum_in_double(const float* v, int64_t n) {
  double partial[8] = {};
  for (int64_t i = 0; i < n; i += 8) {
    for (int j = 0; j < 8; ++j) partial[j] += v[i + j];
  }
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

// fp32 kernels: x[r, k] * 2^x_scale_exponent(bits, k % 32), banded.
at::Tensor arrange_x(const at::Tensor& x, int bits, int band_rows) {
  const int64_t m = x.size(0), k = x.size(1);
  float position_scale[core::kBlockValues];
  for (int j = 0; j < core::kBlockValues; ++j) position_scale[j] = std::ldexp(1.0f, x_scale_exponent(bits, j));
  at::Tensor out = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for_each_band(m, band_rows, [&](int64_t m0, int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = src + (m0 + r) * k;
      float* band = dst + m0 * k + r;
      for (int64_t i = 0; i < k; i += core::kBlockValues) {
        for (int j = 0; j < core::kBlockValues; ++j) band[(i + j) * rows] = row[i + j] * position_scale[j];
      }
    }
  });
  return out;
}

// The bf16 kernel: lane p of each block holds bf16(x[low] 2^-low_offset) | bf16(x[high] 2^-high_offset) << 16
// (cpu/bf16_pairs.h), banded. x holds bf16 values (as fp32), so the products by powers of two are bf16 values too
// and their top halves are exact. Also fills pair_bias with 128 * the sum of the lane values over each segment,
// which the kernel takes out of its sums.
at::Tensor arrange_x_pairs(const at::Tensor& x, int bits, int band_rows, const Segments& segments,
                           std::vector<float>& pair_bias) {
  const int64_t m = x.size(0), k = x.size(1), lanes_per_row = k / 2;
  const int64_t num_segments = static_cast<int64_t>(segments.group.size());
  int low[kPairsPerBlock], high[kPairsPerBlock];
  float low_scale[kPairsPerBlock], high_scale[kPairsPerBlock];
  for (int p = 0; p < kPairsPerBlock; ++p) {
    const Bf16Pair pair = bf16_pair(bits, p);
    low[p] = pair.low;
    high[p] = pair.high;
    low_scale[p] = std::ldexp(1.0f, -pair.low_offset);
    high_scale[p] = std::ldexp(1.0f, -pair.high_offset);
  }
  auto top_half = [](float v) {
    uint32_t bits32;
    std::memcpy(&bits32, &v, sizeof(bits32));
    return bits32 >> 16;
  };
  auto from_top_half = [](uint32_t half) {
    const uint32_t bits32 = half << 16;
    float v;
    std::memcpy(&v, &bits32, sizeof(v));
    return v;
  };
  at::Tensor out = at::empty({m, lanes_per_row}, x.options().dtype(at::kInt));
  const float* src = x.data_ptr<float>();
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  pair_bias.assign(m * num_segments, 0.0f);
  for_each_band(m, band_rows, [&](int64_t m0, int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = src + (m0 + r) * k;
      uint32_t* band = dst + m0 * lanes_per_row + r;
      for (int64_t s = 0; s < num_segments; ++s) {
        double sums[kPairsPerBlock] = {};  // one per lane: independent additions
        for (int64_t b = segments.begin[s]; b < segments.begin[s + 1]; ++b) {
          const float* block = row + b * core::kBlockValues;
          for (int p = 0; p < kPairsPerBlock; ++p) {
            const uint32_t lo = top_half(block[low[p]] * low_scale[p]), hi = top_half(block[high[p]] * high_scale[p]);
            band[(b * kPairsPerBlock + p) * rows] = lo | hi << 16;
            sums[p] += static_cast<double>(from_top_half(lo)) + from_top_half(hi);
          }
        }
        double sum = 0;
        for (double v : sums) sum += v;
        pair_bias[(m0 + r) * num_segments + s] = static_cast<float>(kBf16PairBias * sum);
      }
    }
  });
  return out;
}

at::Tensor fused_gemv(const core::QuantGeometry& geo, const at::Tensor& x, bool x_is_bf16, const at::Tensor& qweight,
                      const at::Tensor& qzeros, const at::Tensor& scales, const Segments& segments) {
  static const FusedKernels kernels = select_fused_kernels();
  const int bits = static_cast<int>(geo.bits);
  const GemvKernel& kernel = x_is_bf16 && has_bf16_pairs(bits) ? *kernels.bf16 : *kernels.fp32;
  const int64_t m = x.size(0), num_segments = static_cast<int64_t>(segments.group.size());
  const float* xp = x.data_ptr<float>();
  // Per-row sums of x over each segment, in double: the zero-point term subtracts zero * sum(x) from
  // sum(x * q), and both can be much larger than their difference.
  std::vector<float> x_sums(m * num_segments);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t s = 0; s < num_segments; ++s) {
      const int64_t k0 = segments.begin[s] * core::kBlockValues, k1 = segments.begin[s + 1] * core::kBlockValues;
      x_sums[r * num_segments + s] = static_cast<float>(sum_in_double(xp + r * geo.k + k0, k1 - k0));
    }
  }
  std::vector<float> pair_bias;
  const at::Tensor x_arranged = kernel.bf16_pairs ? arrange_x_pairs(x, bits, kernel.band_rows, segments, pair_bias)
                                                  : arrange_x(x, bits, kernel.band_rows);

  at::Tensor y = at::empty({m, geo.n}, x.options());  // the kernel's first segment writes it
  GemvProblem p{};
  if (kernel.bf16_pairs) {
    p.x_pairs = reinterpret_cast<const uint32_t*>(x_arranged.data_ptr<int32_t>());
    p.x_pair_bias = pair_bias.data();
  } else {
    p.x = x_arranged.data_ptr<float>();
  }
  p.m = m;
  p.k = geo.k;
  p.n = geo.n;
  p.bits = bits;
  p.qweight = reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>());
  p.qzeros = reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>());
  p.scales = scales.data_ptr();
  p.scale_type = scale_type_of(scales);
  p.num_segments = num_segments;
  p.segment_begin = segments.begin.data();
  p.segment_group = segments.group.data();
  p.x_segment_sums = x_sums.data();
  p.y = y.data_ptr<float>();
  at::parallel_for(0, geo.n / kTileColumns, 1, [&](int64_t t0, int64_t t1) { kernel.tiles(p, t0, t1); });
  return y;
}

// oneDNN's float32 linear (torch.ops.mkldnn._linear_pointwise), called boxed so that a change of its C++
// signature cannot break the build; absent where torch has no oneDNN or the CPU level is below AVX-512.
const c10::OperatorHandle* onednn_linear() {
  static const std::optional<c10::OperatorHandle> handle = []() -> std::optional<c10::OperatorHandle> {
    if (selected_cpu_isa() < CpuIsa::kAvx512) return std::nullopt;
    return c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  }();
  return handle ? &*handle : nullptr;
}

// y_tile = x @ w_tile for x [M, K] and w_tile [K, width], both contiguous float32.
void tile_gemm(const at::Tensor& x, const at::Tensor& w_tile, at::Tensor& y_tile) {
  static bool onednn_failed = false;
  if (const c10::OperatorHandle* linear = onednn_linear(); linear != nullptr && !onednn_failed) {
    // oneDNN reads w_tile^T ([width, K], the weight layout it expects) in place.
    torch::jit::Stack stack{x, w_tile.t(), c10::IValue(), c10::IValue(std::string("none")),
                            c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
    try {
      linear->callBoxed(stack);
      y_tile.copy_(stack.at(0).toTensor());
      return;
    } catch (const c10::Error&) {
      onednn_failed = true;  // another torch whose op takes other arguments: at::mm from now on
    }
  }
  at::mm_out(y_tile, x, w_tile);
}

// x [M, K] contiguous, float32, or bfloat16 on CPUs with AVX512_BF16: then each tile is rounded to bf16 and
// multiplied in bf16 with fp32 accumulation (torch's bf16 GEMM, oneDNN), about 5x the fp32 GEMM's rate, as
// the GPU's large-batch path does. Returns y [M, N] float32.
at::Tensor dequantize_then_gemm(const core::QuantGeometry& geo, const at::Tensor& x, const at::Tensor& qweight,
                                const at::Tensor& qzeros, const at::Tensor& scales, const at::Tensor& g_idx) {
  const int64_t tile = std::min(geo.n, std::max<int64_t>(32, kDequantTileBytes / 4 / geo.k / 32 * 32));
  at::Tensor y = at::empty({x.size(0), geo.n}, x.options().dtype(at::kFloat));
  for (int64_t n0 = 0; n0 < geo.n; n0 += tile) {
    const int64_t width = std::min(tile, geo.n - n0);
    at::Tensor w_tile = at::empty({geo.k, width}, x.options().dtype(at::kFloat));
    at::parallel_for(0, width / 32, 1, [&](int64_t t0, int64_t t1) {
      dequantize_columns(geo, qweight, qzeros, scales, g_idx, n0 + t0 * 32, n0 + t1 * 32,
                         w_tile.data_ptr<float>() + t0 * 32, width);
    });
    at::Tensor y_tile = y.narrow(1, n0, width);
    if (x.scalar_type() == at::kBFloat16) {
      y_tile.copy_(at::mm(x, w_tile.to(at::kBFloat16)));
    } else {
      tile_gemm(x, w_tile, y_tile);
    }
  }
  return y;
}

// gemm on a weight in checkpoint order; `op` names the op the caller was called as, for error messages.
at::Tensor checked_gemm(const char* op, const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                        const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                        const c10::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  const core::QuantGeometry geo =
      core::check_quantized_weight(op, qweight, qzeros, scales, g_idx, bits, group_size);
  core::check_activations(op, x, geo, qweight);
  core::check_bias(op, bias, geo, qweight);
  if (g_idx.has_value()) core::check_group_index_values(op, *g_idx, geo.groups);

  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = geo.n;
  const at::Tensor x2 = x.reshape({-1, geo.k}).to(at::kFloat).contiguous();
  if (x2.size(0) == 0) return at::empty(out_shape, x.options());

  const int32_t* g = g_idx.has_value() ? g_idx->data_ptr<int32_t>() : nullptr;
  Segments segments;
  at::Tensor y;
  if (x2.size(0) <= fused_max_rows() && block_segments(geo, g, segments)) {
    y = fused_gemv(geo, x2, x.scalar_type() == at::kBFloat16, qweight, qzeros, scales, segments);
  } else {
    const bool bf16_gemm = x.scalar_type() == at::kBFloat16 && selected_cpu_isa() >= CpuIsa::kAvx512Bf16;
    y = dequantize_then_gemm(geo, bf16_gemm ? x.reshape({-1, geo.k}).contiguous() : x2, qweight, qzeros, scales,
                             g_idx.has_value() ? *g_idx : at::Tensor());
  }
  if (bias.has_value()) y.add_(bias->to(at::kFloat));
  return y.to(x.scalar_type()).view(out_shape);
}

at::Tensor gemm_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                    const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                    const c10::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  return checked_gemm("gptq_kernels.gemm", x, qweight, qzeros, scales, g_idx, bias, bits, group_size);
}

// The CPU kernels read the checkpoint order, so this converts the weight back for every call: a reference for
// tests and for layers moved between devices, not a fast path (QuantLinear keeps CPU layers in checkpoint order).
at::Tensor gemm_fragment_ordered_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                                     const at::Tensor& scales, const c10::optional<at::Tensor>& g_idx,
                                     const c10::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  constexpr const char* op = "gptq_kernels.gemm_fragment_ordered";
  core::check_fragment_order_bits(op, bits);
  core::check_quantized_weight(op, qweight, qzeros, scales, g_idx, bits, group_size);  // errors name this op
  static const auto from_fragment_order = c10::Dispatcher::singleton()
                                              .findSchemaOrThrow("gptq_kernels::from_fragment_order", "")
                                              .typed<at::Tensor(const at::Tensor&, int64_t)>();
  const at::Tensor checkpoint_order = from_fragment_order.call(qweight, bits);
  return checked_gemm(op, x, checkpoint_order, qzeros, scales, g_idx, bias, bits, group_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CPU, m) {
  m.impl("gemm", &gemm_cpu);
  m.impl("gemm_fragment_ordered", &gemm_fragment_ordered_cpu);
}

}  // namespace cpu
}  // namespace gptq_kernels
