// CUDA implementation of gptq_block: the inner column loop of blocked GPTQ for one block of columns.
//
// Rows are independent (the Hessian couples columns only), so one thread walks one row through the block's
// columns: quantize column j (grid fitted at group starts, core/grid.h as on the CPU), divide the error by
// U[j, j] and subtract error * U[j, j+1:] from the rest of its row. The block is worked on transposed
// ([B, rows]), so the threads of a warp touch consecutive addresses at every step, and all of them read the
// same U[j, c], which the cache broadcasts. A block of a few thousand rows is a few MB: it stays in L2.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/grid.h"
#include "cuda/common.cuh"
#include "cuda/gptq_block.cuh"

namespace gptq_kernels {
namespace cuda {
namespace {

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

template <ScaleKind KIND>
__global__ void __launch_bounds__(kGptqBlockThreads) gptq_block_kernel(const GptqBlockParams p) {
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

}  // namespace

void launch_gptq_block(const GptqBlockParams& p, ScaleKind scale_kind, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.rows + kGptqBlockThreads - 1) / kGptqBlockThreads));
  switch (scale_kind) {
    case ScaleKind::kHalf:
      GPTQ_LAUNCH(grid, kGptqBlockThreads, 0, stream, gptq_block_kernel<ScaleKind::kHalf>)(p);
      break;
    case ScaleKind::kBFloat16:
      GPTQ_LAUNCH(grid, kGptqBlockThreads, 0, stream, gptq_block_kernel<ScaleKind::kBFloat16>)(p);
      break;
    default: GPTQ_LAUNCH(grid, kGptqBlockThreads, 0, stream, gptq_block_kernel<ScaleKind::kFloat>)(p);
  }
}

}  // namespace cuda
}  // namespace gptq_kernels
