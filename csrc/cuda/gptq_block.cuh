// The CUDA gptq_block kernel (gptq_block_kernel.cu) and its arguments; the op around it is gptq_update.cu.
// Free of ATen, so the CPU emulator in tests/emulation runs the same kernel.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gptq_kernels {
namespace cuda {

// The dtype the checkpoint will store scales in: each fitted scale is clamped to its smallest normal and
// rounded to it before use (the CPU op's round_scale).
enum class ScaleKind { kHalf, kBFloat16, kFloat };

struct GptqBlockParams {
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

// One thread per row, kGptqBlockThreads per CTA. The caller checks the launch.
constexpr int kGptqBlockThreads = 128;
void launch_gptq_block(const GptqBlockParams& p, ScaleKind scale_kind, cudaStream_t stream);

}  // namespace cuda
}  // namespace gptq_kernels
