// CPU implementation of gptq_block: the inner column loop of blocked GPTQ for one block of columns.
//
// Each row of the weight is quantized independently (the Hessian couples columns, never rows), so the op
// parallelises over rows and walks the block's columns in order: quantize column j, divide its error by
// U[j, j] and subtract error * U[j, j+1:] from the rest of the row. Rows go kLanes at a time through a
// transposed copy of the block (column-major, kLanes rows side by side), so the update of column c is one
// vector multiply-add over kLanes rows with U[j, c] broadcast, and the lanes' dependency chains interleave.
// The update of the columns after the block (a GEMM) is left to the caller.
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
#include "core/grid.h"

namespace gptq_kernels {
namespace cpu {
namespace {

// Rows per parallel task: a task is rows * B * B / 2 multiply-adds, 16 rows of a 128-column block ~ 130k.
constexpr int64_t kGrainRows = 16;
// Rows processed side by side (two AVX2 or four SSE vectors).
constexpr int kLanes = 8;

// The scale as the checkpoint will hold it: clamped to the dtype's smallest normal, then rounded to it.
template <typename T>
float round_scale(float scale) {
  const float tiny = static_cast<float>(std::numeric_limits<T>::min());
  return static_cast<float>(static_cast<T>(std::max(scale, tiny)));
}

using ScaleRounding = float (*)(float);

// The hot loop: block[c][l] -= e[l] * u[c] for columns c in [from, to), kLanes rows at a time, written with
// GCC/Clang vector types (two SSE or one AVX operation each): the compiler does not vectorise the scalar
// form of this loop on its own.
typedef float LaneVector __attribute__((vector_size(kLanes * sizeof(float))));
static_assert(sizeof(LaneVector) == kLanes * sizeof(float), "one LaneVector holds the block's kLanes rows");

inline void subtract_outer(float* block, const float* u, const float* e, int64_t from, int64_t to) {
  LaneVector ev;
  __builtin_memcpy(&ev, e, sizeof(ev));
  for (int64_t c = from; c < to; ++c) {
    LaneVector column;
    __builtin_memcpy(&column, block + c * kLanes, sizeof(column));
    column -= ev * u[c];
    __builtin_memcpy(block + c * kLanes, &column, sizeof(column));
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

  const at::Tensor w = weight.contiguous();  // read once into per-task working copies
  const at::Tensor u = hinv.contiguous();
  at::Tensor q = at::empty({rows, width}, weight.options().dtype(at::kInt));
  at::Tensor deq = at::empty({rows, width}, weight.options());
  at::Tensor err = at::empty({rows, width}, weight.options());
  at::Tensor scale_out = fit ? at::empty({rows, width}, weight.options()) : scale->contiguous().clone();
  at::Tensor zero_out = fit ? at::empty({rows, width}, weight.options()) : zero->contiguous().clone();

  const float* pu = u.data_ptr<float>();
  const float* pw = w.data_ptr<float>();
  int32_t* pq = q.data_ptr<int32_t>();
  float* pd = deq.data_ptr<float>();
  float* pe = err.data_ptr<float>();
  float* ps = scale_out.data_ptr<float>();
  float* pz = zero_out.data_ptr<float>();
  const int b = static_cast<int>(bits);

  at::parallel_for(0, rows, kGrainRows, [&](int64_t r0, int64_t r1) {
    std::vector<float> block(static_cast<size_t>(width) * kLanes);  // block[c * kLanes + l] = row r + l, column c
    for (int64_t r = r0; r < r1; r += kLanes) {
      const int lanes = static_cast<int>(std::min<int64_t>(kLanes, r1 - r));
      std::fill(block.begin(), block.end(), 0.0f);  // unused lanes stay 0 and get error 0
      for (int l = 0; l < lanes; ++l) {
        for (int64_t c = 0; c < width; ++c) block[c * kLanes + l] = pw[(r + l) * width + c];
      }
      float s[kLanes] = {}, z[kLanes] = {}, e[kLanes];
      for (int64_t j = 0; j < width; ++j) {
        const float* u_row = pu + j * width;
        float* col = block.data() + j * kLanes;
        for (int l = 0; l < lanes; ++l) {
          const int64_t at = (r + l) * width + j;
          if (fit) {
            if ((column_offset + j) % group_size == 0) {
              // The group's grid comes from its columns as they are now: already corrected for the errors
              // of every column quantized before it, as in the per-column algorithm.
              const int64_t end = std::min(width, j + group_size);
              float lo = col[l], hi = col[l];
              for (int64_t c = j + 1; c < end; ++c) {
                lo = std::min(lo, block[c * kLanes + l]);
                hi = std::max(hi, block[c * kLanes + l]);
              }
              const core::Grid g = core::fit_grid(lo, hi, b, sym);
              s[l] = rounding(g.scale);
              z[l] = g.zero;
            }
            ps[at] = s[l];
            pz[at] = z[l];
          } else {
            s[l] = ps[at];
            z[l] = pz[at];
          }
          const float x = col[l];
          const float qv = core::quantize_value(x, s[l], z[l], b);
          const float dq = core::dequantize_value(qv, s[l], z[l]);
          e[l] = (x - dq) / u_row[j];
          pq[at] = static_cast<int32_t>(qv);
          pd[at] = dq;
          pe[at] = e[l];
        }
        for (int l = lanes; l < kLanes; ++l) e[l] = 0.0f;
        subtract_outer(block.data(), u_row, e, j + 1, width);
      }
    }
  });
  return {q, deq, err, scale_out, zero_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CPU, m) { m.impl("gptq_block", &gptq_block_cpu); }

}  // namespace cpu
}  // namespace gptq_kernels
