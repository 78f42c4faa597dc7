// CPU `bcq_dequantize` and `bcq_gemm`: binary-coded (BCQ) weights (layout in csrc/core/bcq.h).
//
// bcq_gemm has two paths:
//  * few rows (M <= kLutMaxRowsFused), 2 or 3 planes and groups on 32-input boundaries: the lookup-table kernel
//    of cpu/bcq_lut_tile.h, which reads the packed planes once and never forms the dequantized matrix;
//  * otherwise: dequantize a tile of columns to fp32 and multiply it with the BLAS GEMM (at::mm_out), as the
//    uniform gemm does. Correct for every input the op accepts (any plane count, any group size).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "core/bcq.h"
#include "core/bcq_checks.h"
#include "core/checks.h"
#include "cpu/bcq_lut.h"
#include "cpu/isa.h"

namespace gptq_kernels {
namespace cpu {
namespace {

// Up to this many rows the lookups (one permute and one add per row for every C inputs of every plane) beat
// dequantize + BLAS, as for the uniform kernel: at 32 rows, 4096 x 11008, the lookups took a third of the time of
// dequantize + sgemm on the build machine (AVX-512).
constexpr int64_t kLutMaxRowsFused = 32;
// Columns per dequantized tile of the large-batch path: K * tile width floats stay within this many bytes.
constexpr int64_t kDequantTileBytes = int64_t{8} << 20;

// The variant for the instruction-set level cpu/isa.h selects (the avx512 one at the avx512bf16 level).
BcqKernels select_kernels() {
  switch (selected_cpu_isa()) {
#if defined(GPTQ_KERNELS_X86)
    case CpuIsa::kAvx512Bf16:
    case CpuIsa::kAvx512: return bcq_kernels_avx512();
    case CpuIsa::kAvx2: return bcq_kernels_avx2();
#endif
    default: return bcq_kernels_generic();
  }
}

ScaleType scale_type_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return ScaleType::kHalf;
    case at::kBFloat16: return ScaleType::kBFloat16;
    default: return ScaleType::kFloat;
  }
}

const BcqKernels& kernels() {
  static const BcqKernels selected = select_kernels();
  return selected;
}

const uint32_t* words_of(const at::Tensor& qplanes) {
  return reinterpret_cast<const uint32_t*>(qplanes.data_ptr<int32_t>());
}

at::Tensor bcq_dequantize_cpu(const at::Tensor& qplanes, const at::Tensor& alpha, const at::Tensor& offset,
                              int64_t group_size) {
  const core::BcqGeometry geo = core::check_bcq_weight("gptq_kernels.bcq_dequantize", qplanes, alpha, offset,
                                                       group_size);
  const at::Tensor alpha_f = alpha.to(at::kFloat).contiguous(), offset_f = offset.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({geo.k, geo.n}, alpha.options().dtype(at::kFloat));
  at::parallel_for(0, geo.n / 32, 1, [&](int64_t t0, int64_t t1) {
    kernels().dequantize_columns(words_of(qplanes), alpha_f.data_ptr<float>(), offset_f.data_ptr<float>(),
                                 geo.planes, geo.k, geo.n, geo.group_size, t0 * 32, t1 * 32,
                                 out.data_ptr<float>() + t0 * 32, geo.n);
  });
  return out.to(alpha.scalar_type());
}

at::Tensor dequantize_then_gemm(const core::BcqGeometry& geo, const at::Tensor& x, const at::Tensor& qplanes,
                                const at::Tensor& alpha, const at::Tensor& offset) {
  const at::Tensor alpha_f = alpha.to(at::kFloat).contiguous(), offset_f = offset.to(at::kFloat).contiguous();
  const int64_t tile = std::min(geo.n, std::max<int64_t>(32, kDequantTileBytes / 4 / geo.k / 32 * 32));
  at::Tensor y = at::empty({x.size(0), geo.n}, x.options());
  at::Tensor w = at::empty({geo.k, tile}, x.options());
  for (int64_t n0 = 0; n0 < geo.n; n0 += tile) {
    const int64_t width = std::min(tile, geo.n - n0);
    at::parallel_for(0, width / 32, 1, [&](int64_t t0, int64_t t1) {
      kernels().dequantize_columns(words_of(qplanes), alpha_f.data_ptr<float>(), offset_f.data_ptr<float>(),
                                   geo.planes, geo.k, geo.n, geo.group_size, n0 + t0 * 32, n0 + t1 * 32,
                                   w.data_ptr<float>() + t0 * 32, tile);
    });
    at::Tensor y_tile = y.narrow(1, n0, width);
    at::mm_out(y_tile, x, w.narrow(1, 0, width));
  }
  return y;
}

at::Tensor lut_gemv(const core::BcqGeometry& geo, const at::Tensor& x, const at::Tensor& qplanes,
                    const at::Tensor& alpha, const at::Tensor& offset) {
  const BcqKernels& kernel = kernels();
  const int64_t m = x.size(0), kblocks = geo.k / core::kBlockValues;
  const float* xp = x.data_ptr<float>();

  // Segments (blocks of one group) and runs (segments of at most kBcqMaxRunBlocks blocks in all; see bcq_lut.h).
  std::vector<int64_t> segment_begin, segment_group, run_begin;
  for (int64_t b = 0; b < kblocks; ++b) {
    const int64_t g = core::bcq_block_group(b, geo.group_size);
    const bool new_run = run_begin.empty() || b - segment_begin[run_begin.back()] == kBcqMaxRunBlocks;
    if (new_run || segment_group.back() != g) {
      if (new_run) run_begin.push_back(static_cast<int64_t>(segment_group.size()));
      segment_begin.push_back(b);
      segment_group.push_back(g);
    }
  }
  segment_begin.push_back(kblocks);
  const int64_t num_segments = static_cast<int64_t>(segment_group.size());
  run_begin.push_back(num_segments);
  // Per-row sums of x over each segment (the offset's term), in double: the offset and plane terms can be much
  // larger than their sum.
  std::vector<double> x_sums(m * num_segments);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t s = 0; s < num_segments; ++s) {
      double sum = 0;
      for (int64_t k = segment_begin[s] * 32; k < segment_begin[s + 1] * 32; ++k) sum += xp[r * geo.k + k];
      x_sums[r * num_segments + s] = sum;
    }
  }
  at::Tensor tables = at::empty({m * kblocks * kernel.table_floats_per_block}, x.options());
  float* tp = tables.data_ptr<float>();
  // One thread: the tables take about 1% of the lookups' time, and a second parallel region would cost a
  // synchronisation (a scheduler time slice when the other cores are busy).
  kernel.build_tables(xp, m, geo.k, 0, kblocks, tp);

  at::Tensor y = at::zeros({m, geo.n}, x.options());
  BcqLutProblem p{};
  p.tables = tp;
  p.m = m;
  p.k = geo.k;
  p.n = geo.n;
  p.planes = static_cast<int>(geo.planes);
  p.qplanes = words_of(qplanes);
  p.alpha = alpha.data_ptr();
  p.alpha_type = scale_type_of(alpha);
  p.offset = offset.data_ptr();
  p.offset_type = scale_type_of(offset);
  p.num_segments = num_segments;
  p.segment_begin = segment_begin.data();
  p.segment_group = segment_group.data();
  p.x_segment_sums = x_sums.data();
  p.num_runs = static_cast<int64_t>(run_begin.size()) - 1;
  p.run_begin = run_begin.data();
  p.y = y.data_ptr<float>();
  at::parallel_for(0, geo.n / kBcqTileColumns, 1, [&](int64_t t0, int64_t t1) { kernel.tiles(p, t0, t1); });
  return y;
}

at::Tensor bcq_gemm_cpu(const at::Tensor& x, const at::Tensor& qplanes, const at::Tensor& alpha,
                        const at::Tensor& offset, const c10::optional<at::Tensor>& bias, int64_t group_size) {
  constexpr const char* op = "gptq_kernels.bcq_gemm";
  const core::BcqGeometry geo = core::check_bcq_weight(op, qplanes, alpha, offset, group_size);
  core::check_bcq_inputs(op, x, bias, geo, qplanes);

  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = geo.n;
  const at::Tensor x2 = x.reshape({-1, geo.k}).to(at::kFloat).contiguous();
  if (x2.size(0) == 0) return at::empty(out_shape, x.options());

  at::Tensor y;
  if (x2.size(0) <= kLutMaxRowsFused && core::bcq_fused_planes(geo.planes) &&
      core::bcq_groups_align_to_blocks(geo.k, geo.group_size)) {
    y = lut_gemv(geo, x2, qplanes, alpha, offset);
  } else {
    y = dequantize_then_gemm(geo, x2, qplanes, alpha, offset);
  }
  if (bias.has_value()) y.add_(bias->to(at::kFloat));
  return y.to(x.scalar_type()).view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CPU, m) {
  m.impl("bcq_dequantize", &bcq_dequantize_cpu);
  m.impl("bcq_gemm", &bcq_gemm_cpu);
}

}  // namespace cpu
}  // namespace gptq_kernels
