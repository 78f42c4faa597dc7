// CUDA implementation of gptq_block: the inner column loop of blocked GPTQ for one block of columns.
//
// Rows are independent (the Hessian couples columns only), so one thread walks one row through the block's
// columns: quantize column j (grid fitted at group starts, core/grid.h as on the CPU), divide the error by
// U[j, j] and subtract error * U[j, j+1:] from the rest of its row. The block is worked on transposed
// ([B, rows]), so the threads of a warp touch consecutive addresses at every step, and all of them read the
// same U[j, c], which the cache broadcasts. A block of a few thousand rows is a few MB: it stays in L2.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <tuple>

#include "core/checks.h"
#include "core/grid.h"

namespace gptq_kernels {
namespace cuda {
namespace {

constexpr int kThreads = 128;

// The scale as the checkpoint will hold it: clamped to the dtype's smallest normal, then rounded to it
// (the CPU op's round_scale).
enum class ScaleKind { kHalf, kBFloat16, kFloat };

template <ScaleKind KIND>
__device__ __forceinline__ float round_scale(float scale) {
  if constexpr (KIND == ScaleKind::kHalf) {
    return __half2float(__float2half_rn(fmaxf(scale, 6.103515625e-05f)));
  } else if constexpr (KIND == ScaleKind::kBFloat16) {
    return __bfloat162float(__float2bfloat16_rn(fmaxf(scale, 1.17549435e-38f)));
  } else {
    return fmaxf(scale, 1.17549435e-38f);
  }
}

struct BlockParams {
  float* w;          // [B, rows] working copy, receives the in-block updates
  const float* u;    // [B, B] the block's diagonal block of U
  int32_t* q;        // outputs, all [B, rows]
  float* deq;
  float* err;
  float* scale;      // in: the grids when fit == false; out: the grids used
  float* zero;
  int64_t rows;
  int width;
  int bits;
  bool sym;
  bool fit;
  int64_t group_size;
  int64_t column_offset;
};

template <ScaleKind KIND>
__global__ void gptq_block_kernel(BlockParams p) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= p.rows) return;
  const int64_t stride = p.rows;  // between consecutive columns of one row
  float s = 0.f, z = 0.f;
  for (int j = 0; j < p.width; ++j) {
    const int64_t at = j * stride + r;
    if (p.fit) {
      if ((p.column_offset + j) % p.group_size == 0) {
        const int end = static_cast<int>(min(static_cast<int64_t>(p.width), j + p.group_size));
        float lo = p.w[at], hi = lo;
        for (int c = j + 1; c < end; ++c) {
          const float v = p.w[c * stride + r];
          lo = fminf(lo, v);
          hi = fmaxf(hi, v);
        }
        const core::Grid g = core::fit_grid(lo, hi, p.bits, p.sym);
        s = round_scale<KIND>(g.scale);
        z = g.zero;
      }
      p.scale[at] = s;
      p.zero[at] = z;
    } else {
      s = p.scale[at];
      z = p.zero[at];
    }
    const float x = p.w[at];
    const float qv = core::quantize_value(x, s, z, p.bits);
    const float dq = core::dequantize_value(qv, s, z);
    const float* u_row = p.u + static_cast<int64_t>(j) * p.width;
    const float e = (x - dq) / __ldg(u_row + j);
    p.q[at] = static_cast<int32_t>(qv);
    p.deq[at] = dq;
    p.err[at] = e;
    for (int c = j + 1; c < p.width; ++c) p.w[c * stride + r] -= e * __ldg(u_row + c);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gptq_block_cuda(
    const at::Tensor& weight, const at::Tensor& hinv, int64_t bits, bool sym, int64_t group_size,
    int64_t column_offset, const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& zero,
    at::ScalarType scale_dtype) {
  constexpr const char* op = "gptq_kernels.gptq_block";
  const bool fit = core::check_gptq_block_args(op, weight, hinv, bits, group_size, column_offset, scale, zero);
  TORCH_CHECK(weight.is_cuda(), op, ": expected CUDA tensors here, got ", weight.device());
  TORCH_CHECK(scale_dtype == at::kHalf || scale_dtype == at::kBFloat16 || scale_dtype == at::kFloat, op,
              ": scale_dtype must be float16, bfloat16 or float32, got ", scale_dtype);
  const int64_t rows = weight.size(0), width = weight.size(1);
  const c10::cuda::CUDAGuard guard(weight.device());
  // Transposed working copies ([B, rows]); the results are transposed back at the end.
  at::Tensor w = weight.t().contiguous();
  const at::Tensor u = hinv.contiguous();
  at::Tensor q = at::empty({width, rows}, weight.options().dtype(at::kInt));
  at::Tensor deq = at::empty({width, rows}, weight.options());
  at::Tensor err = at::empty({width, rows}, weight.options());
  at::Tensor scale_t = fit ? at::empty({width, rows}, weight.options()) : scale->t().contiguous();
  at::Tensor zero_t = fit ? at::empty({width, rows}, weight.options()) : zero->t().contiguous();
  auto transposed_back = [](const at::Tensor& t) { return t.t().contiguous(); };
  if (rows > 0 && width > 0) {
    BlockParams p{w.data_ptr<float>(), u.data_ptr<float>(), q.data_ptr<int32_t>(), deq.data_ptr<float>(),
                  err.data_ptr<float>(), scale_t.data_ptr<float>(), zero_t.data_ptr<float>(), rows,
                  static_cast<int>(width), static_cast<int>(bits), sym, fit, fit ? group_size : 1,
                  column_offset};
    const dim3 grid(static_cast<unsigned>((rows + kThreads - 1) / kThreads));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    switch (scale_dtype) {
      case at::kHalf: gptq_block_kernel<ScaleKind::kHalf><<<grid, kThreads, 0, stream>>>(p); break;
      case at::kBFloat16: gptq_block_kernel<ScaleKind::kBFloat16><<<grid, kThreads, 0, stream>>>(p); break;
      default: gptq_block_kernel<ScaleKind::kFloat><<<grid, kThreads, 0, stream>>>(p); break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {transposed_back(q), transposed_back(deq), transposed_back(err), transposed_back(scale_t),
          transposed_back(zero_t)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CUDA, m) { m.impl("gptq_block", &gptq_block_cuda); }

}  // namespace cuda
}  // namespace gptq_kernels
