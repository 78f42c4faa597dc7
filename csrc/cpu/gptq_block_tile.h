// The gptq_block kernel body (interface: cpu/gptq_block.h), written once against a vector traits type (Vec)
// and compiled once per instruction set. Include it only after the including file has set its target options:
// everything here has internal linkage, so the copies built for different instruction sets never meet at link
// time.
//
// Vec provides: kLanes, F (kLanes floats), load, store, store_int (an F of whole numbers -> int32), set1, add,
// sub, mul, div, min, max, round (to nearest, ties to even, as torch.round), transpose (F[kLanes] as a
// kLanes x kLanes matrix, in place).
//
// Rows are independent, so a group of kRows = V * kLanes rows goes through a transposed copy of the block
// (block[c * kRows + row]), where one column of the group is V vectors. Column j is quantized for all of them
// at once, and its error e (V vectors) updates column c > j as block[c] -= e * U[j, c].
//
// The updates go N <= K columns at a time: the columns of a run are quantized one after another, each first
// taking the updates of the run's earlier columns, and then the run's N errors, held in registers, update
// every later column with one load and one store per N multiply-subtracts. Every element still receives its
// updates in column order, each as a rounded product followed by a rounded subtraction, and every division
// stays a division: the exact operations of the per-column loop gptq.gptq_block_torch, so the integers match
// it bit for bit. The including file must therefore keep the compiler from fusing a multiply and a subtract
// (fp-contract=off).
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/grid.h"
#include "cpu/gptq_block.h"

namespace gptq_kernels {
namespace cpu {
namespace {

template <class Vec, int V>
struct RowGroup {
  static constexpr int kRows = V * Vec::kLanes;

  const GptqBlockProblem& p;
  int64_t row, lanes;  // first row of the group, rows of it that exist (the rest are padding)
  // Planes of [width][kRows] floats.
  float* block;  // the rows, updated in place
  float* q;      // outputs (q as floats), copied out row by row at the end
  float* dequantized;
  float* error;
  // The grid of column j: precomputed grids at column j; fitted ones once per group, at its first column.
  float* scale;
  float* zero;
};

template <class Vec, int V>
int64_t workspace_floats(int64_t width) {
  return 6 * width * RowGroup<Vec, V>::kRows;
}

// dst[c * kRows + l] = src[l * width + c] for the group's rows (row l of the group is src + l * width); padding
// lanes get `pad`. Whole kLanes x kLanes tiles go through registers.
template <class Vec, int V>
void copy_in(const float* src, int64_t width, int64_t lanes, float pad, float* dst) {
  using F = typename Vec::F;
  constexpr int kRows = RowGroup<Vec, V>::kRows, L = Vec::kLanes;
  const int64_t tiled = width - width % L;
  for (int v = 0; v < V; ++v) {
    for (int64_t c0 = 0; c0 < tiled; c0 += L) {
      F tile[L];
      for (int i = 0; i < L; ++i) {
        tile[i] = v * L + i < lanes ? Vec::load(src + (v * L + i) * width + c0) : Vec::set1(pad);
      }
      Vec::transpose(tile);
      for (int i = 0; i < L; ++i) Vec::store(dst + (c0 + i) * kRows + v * L, tile[i]);
    }
  }
  for (int64_t c = tiled; c < width; ++c) {
    for (int64_t l = 0; l < kRows; ++l) dst[c * kRows + l] = l < lanes ? src[l * width + c] : pad;
  }
}

// The inverse of copy_in for the group's rows that exist; T = int32_t converts (the values are whole numbers).
template <class Vec, int V, class T>
void copy_out(const float* src, int64_t width, int64_t lanes, T* dst) {
  using F = typename Vec::F;
  constexpr int kRows = RowGroup<Vec, V>::kRows, L = Vec::kLanes;
  const int64_t tiled = width - width % L;
  for (int v = 0; v < V && v * L < lanes; ++v) {
    for (int64_t c0 = 0; c0 < tiled; c0 += L) {
      F tile[L];
      for (int i = 0; i < L; ++i) tile[i] = Vec::load(src + (c0 + i) * kRows + v * L);
      Vec::transpose(tile);
      for (int i = 0; i < L && v * L + i < lanes; ++i) {
        T* row = dst + (v * L + i) * width + c0;
        if constexpr (std::is_same_v<T, int32_t>) {
          Vec::store_int(row, tile[i]);
        } else {
          Vec::store(row, tile[i]);
        }
      }
    }
  }
  for (int64_t l = 0; l < lanes; ++l) {
    for (int64_t c = tiled; c < width; ++c) dst[l * width + c] = static_cast<T>(src[c * kRows + l]);
  }
}

// The grid of the group that starts at column j, fitted to its columns as they are now (corrected for the
// errors of every earlier column, as in the per-column algorithm).
template <class Vec, int V>
void fit_group(const RowGroup<Vec, V>& g, int64_t j) {
  using F = typename Vec::F;
  constexpr int kRows = RowGroup<Vec, V>::kRows, L = Vec::kLanes;
  const GptqBlockProblem& p = g.p;
  const int64_t end = j + p.group_size < p.width ? j + p.group_size : p.width;
  F lo[V], hi[V];
  for (int v = 0; v < V; ++v) lo[v] = hi[v] = Vec::load(g.block + j * kRows + v * L);
  for (int64_t c = j + 1; c < end; ++c) {
    for (int v = 0; v < V; ++v) {
      const F x = Vec::load(g.block + c * kRows + v * L);
      lo[v] = Vec::min(lo[v], x);
      hi[v] = Vec::max(hi[v], x);
    }
  }
  float* const scale = g.scale + j * kRows;
  float* const zero = g.zero + j * kRows;
  for (int v = 0; v < V; ++v) {
    Vec::store(scale + v * L, lo[v]);
    Vec::store(zero + v * L, hi[v]);
  }
  for (int l = 0; l < kRows; ++l) {
    const core::Grid grid = core::fit_grid(scale[l], zero[l], p.bits, p.sym);
    scale[l] = p.round_scale(grid.scale);
    zero[l] = grid.zero;
  }
}

// The fitted grids into the scale and zero outputs, a row at a time (sequential stores).
template <class Vec, int V>
void write_fitted_grids(const RowGroup<Vec, V>& g) {
  constexpr int kRows = RowGroup<Vec, V>::kRows;
  const GptqBlockProblem& p = g.p;
  for (int64_t l = 0; l < g.lanes; ++l) {
    float* const scale = p.scale + (g.row + l) * p.width;
    float* const zero = p.zero + (g.row + l) * p.width;
    for (int64_t j = 0; j < p.width;) {
      const int64_t group_end = j + p.group_size - (p.column_offset + j) % p.group_size;
      const int64_t end = group_end < p.width ? group_end : p.width;
      const float s = g.scale[j * kRows + l], z = g.zero[j * kRows + l];
      for (; j < end; ++j) {
        scale[j] = s;
        zero[j] = z;
      }
    }
  }
}

// Quantizes columns [j0, j0 + N) and subtracts their errors from every later column. Column j0 + k uses the
// grid at grid_scale[k * grid_stride], grid_zero[k * grid_stride].
template <class Vec, int V, int N>
void quantize_run(const RowGroup<Vec, V>& g, int64_t j0, const float* grid_scale, const float* grid_zero,
                  int64_t grid_stride) {
  using F = typename Vec::F;
  constexpr int kRows = RowGroup<Vec, V>::kRows, L = Vec::kLanes;
  // Locals, so that the stores below are not taken to modify them.
  const int64_t width = g.p.width;
  const float* const u = g.p.hinv;
  float* const block = g.block;
  const F zero = Vec::set1(0.0f), maxq = Vec::set1(static_cast<float>((1 << g.p.bits) - 1));
  F e[N][V];
#pragma GCC unroll 16
  for (int k = 0; k < N; ++k) {
    const int64_t j = j0 + k;
    F x[V];
    for (int v = 0; v < V; ++v) x[v] = Vec::load(block + j * kRows + v * L);
#pragma GCC unroll 16
    for (int i = 0; i < k; ++i) {
      const F ui = Vec::set1(u[(j0 + i) * width + j]);
      for (int v = 0; v < V; ++v) x[v] = Vec::sub(x[v], Vec::mul(e[i][v], ui));
    }
    const F diagonal = Vec::set1(u[j * width + j]);
    for (int v = 0; v < V; ++v) {
      const F s = Vec::load(grid_scale + k * grid_stride + v * L);
      const F z = Vec::load(grid_zero + k * grid_stride + v * L);
      const F qv = Vec::min(Vec::max(Vec::add(Vec::round(Vec::div(x[v], s)), z), zero), maxq);
      const F dq = Vec::mul(s, Vec::sub(qv, z));
      e[k][v] = Vec::div(Vec::sub(x[v], dq), diagonal);
      Vec::store(g.q + j * kRows + v * L, qv);
      Vec::store(g.dequantized + j * kRows + v * L, dq);
      Vec::store(g.error + j * kRows + v * L, e[k][v]);
    }
  }
  for (int64_t c = j0 + N; c < width; ++c) {
    F x[V];
    for (int v = 0; v < V; ++v) x[v] = Vec::load(block + c * kRows + v * L);
#pragma GCC unroll 16
    for (int k = 0; k < N; ++k) {
      const F uk = Vec::set1(u[(j0 + k) * width + c]);
      for (int v = 0; v < V; ++v) x[v] = Vec::sub(x[v], Vec::mul(e[k][v], uk));
    }
    for (int v = 0; v < V; ++v) Vec::store(block + c * kRows + v * L, x[v]);
  }
}

// quantize_run with the run length known only at run time.
template <class Vec, int V, int... N>
void quantize_run_of(const RowGroup<Vec, V>& g, int64_t j0, int n, const float* grid_scale, const float* grid_zero,
                     int64_t grid_stride, std::integer_sequence<int, N...>) {
  ((n == N + 1 ? quantize_run<Vec, V, N + 1>(g, j0, grid_scale, grid_zero, grid_stride) : void()), ...);
}

template <class Vec, int V, int K>
void gptq_block_rows(const GptqBlockProblem& p, int64_t row_begin, int64_t row_end, float* workspace) {
  constexpr int kRows = RowGroup<Vec, V>::kRows;
  const int64_t width = p.width, plane = width * kRows;
  for (int64_t r = row_begin; r < row_end; r += kRows) {
    const int64_t lanes = row_end - r < kRows ? row_end - r : kRows;
    const RowGroup<Vec, V> g{p, r, lanes, workspace, workspace + plane, workspace + 2 * plane,
                             workspace + 3 * plane, workspace + 4 * plane, workspace + 5 * plane};
    copy_in<Vec, V>(p.weight + r * width, width, lanes, 0.0f, g.block);
    if (!p.fit) {  // padding lanes get a harmless grid
      copy_in<Vec, V>(p.scale + r * width, width, lanes, 1.0f, g.scale);
      copy_in<Vec, V>(p.zero + r * width, width, lanes, 0.0f, g.zero);
    }
    for (int64_t j0 = 0; j0 < width;) {
      int64_t n = width - j0 < K ? width - j0 : K;
      int64_t grid_column = j0, grid_stride = kRows;
      if (p.fit) {
        // A run never crosses a group start: the grid is fitted to columns that have every earlier update.
        // (column_offset is a multiple of group_size, so every group starts inside the block.)
        const int64_t into_group = (p.column_offset + j0) % p.group_size;
        if (into_group == 0) fit_group(g, j0);
        if (p.group_size - into_group < n) n = p.group_size - into_group;
        grid_column = j0 - into_group;
        grid_stride = 0;
      }
      quantize_run_of(g, j0, static_cast<int>(n), g.scale + grid_column * kRows, g.zero + grid_column * kRows,
                      grid_stride, std::make_integer_sequence<int, K>());
      j0 += n;
    }
    copy_out<Vec, V>(g.q, width, lanes, p.q + r * width);
    copy_out<Vec, V>(g.dequantized, width, lanes, p.dequantized + r * width);
    copy_out<Vec, V>(g.error, width, lanes, p.error + r * width);
    if (p.fit) write_fitted_grids(g);
  }
}

template <class Vec, int V, int K>
GptqBlockKernel gptq_block_kernel_for() {
  return {RowGroup<Vec, V>::kRows, &workspace_floats<Vec, V>, &gptq_block_rows<Vec, V, K>};
}

}  // namespace
}  // namespace cpu
}  // namespace gptq_kernels
