// The CPU gptq_block kernel: the column loop of one GPTQ block for a range of rows, one variant per
// instruction set (gptq_block_generic.cpp, gptq_block_avx2.cpp, gptq_block_avx512.cpp), chosen at run time
// by cpu/gptq_update.cpp. The body is cpu/gptq_block_tile.h.
#pragma once
#include <cstdint>

namespace gptq_kernels {
namespace cpu {

// Rounds a fitted scale to the storage dtype (clamped to its smallest normal first).
using ScaleRounding = float (*)(float);

struct GptqBlockProblem {
  const float* weight;  // [rows, width], contiguous
  const float* hinv;    // [width, width], upper triangular U of the block
  int64_t rows, width;
  int bits;
  bool sym;
  // true: fit a grid at every group start, (column_offset + j) % group_size == 0, and write it to scale and
  // zero; false: scale and zero already hold the grid of every element.
  bool fit;
  int64_t group_size, column_offset;
  ScaleRounding round_scale;
  int32_t* q;          // [rows, width] outputs
  float* dequantized;
  float* error;
  float* scale;
  float* zero;
};

struct GptqBlockKernel {
  // Rows processed side by side: every call but the one holding the last row gets a multiple of this.
  int64_t rows_per_group;
  // Floats of scratch memory one call needs for a block this wide.
  int64_t (*workspace_floats)(int64_t width);
  // Rows [row_begin, row_end) of the block; row_begin is a multiple of rows_per_group.
  void (*rows)(const GptqBlockProblem& p, int64_t row_begin, int64_t row_end, float* workspace);
};

GptqBlockKernel gptq_block_kernel_generic();
GptqBlockKernel gptq_block_kernel_avx2();
GptqBlockKernel gptq_block_kernel_avx512();

}  // namespace cpu
}  // namespace gptq_kernels
