// Every op schema of the extension, in one place: this is the contract other projects link against.
// Implementations register per device (csrc/cpu/*.cpp, csrc/cuda/*.cu); shape functions for
// torch.compile live in gptq_kernels/ops.py.
//
// Layout (see csrc/core/bitpack.h and README "Checkpoint layout"): for a weight W of shape [N, K]
// (nn.Linear convention), qweight is int32 [K*bits/32, N], qzeros int32 [G, N*bits/32] holding zero-1,
// scales [G, N], g_idx int32 [K] mapping input channel -> group, G = ceil(K / group_size).
// Dequantized: W^T[k, n] = scales[g, n] * (q[k, n] - zero[g, n]) with zero = (stored_zero + 1) mod 2^bits,
// g = g_idx[k] or k / group_size.
#include <Python.h>
#include <torch/library.h>

#include "core/build_info.h"

extern "C" {
// Importing gptq_kernels._C runs the static registrations below; the module's one member, cuda_archs, names the
// GPU architectures its CUDA code was built for (gptq_kernels.ops.cuda_archs()).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  const std::string archs = gptq_kernels::core::built_cuda_archs();
  if (m != nullptr && PyModule_AddStringConstant(m, "cuda_archs", archs.c_str()) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
}

TORCH_LIBRARY(gptq_kernels, m) {
  // values int32 [K, N] with entries in [0, 2^bits), K a multiple of 32 -> int32 [K*bits/32, N].
  m.def("pack(Tensor values, int bits) -> Tensor");
  // The inverse of pack: int32 [K*bits/32, N] -> int32 [K, N].
  m.def("unpack(Tensor packed, int bits) -> Tensor");
  // The act-order repack: rows of the unpacked [K, N] matrix reordered, out row r = row perm[r] (perm int64
  // [K], a permutation), packed -> packed without unpacking. QuantLinear sorts act-order layers' input
  // channels by group with it at load, so the matmul kernels never look a group up per weight.
  m.def("permute_rows(Tensor packed, Tensor perm, int bits) -> Tensor");
  // Fragment order (csrc/core/fragment_order.h): the 2- and 4-bit layout the CUDA kernels read fastest, a
  // permutation of the 32 values of every block of every column (same shape). Any device; 3- and 8-bit weights
  // have none and are rejected. from_fragment_order is the inverse.
  m.def("to_fragment_order(Tensor qweight, int bits) -> Tensor");
  m.def("from_fragment_order(Tensor qweight, int bits) -> Tensor");
  // W^T as a dense [K, N] tensor of scales.dtype. g_idx None means g = k / group_size.
  m.def("dequantize(Tensor qweight, Tensor qzeros, Tensor scales, Tensor? g_idx, int bits, int group_size)"
        " -> Tensor");
  // y = x @ W^T + bias for x [..., K] (float16/bfloat16/float32); y [..., N] has x's dtype.
  m.def("gemm(Tensor x, Tensor qweight, Tensor qzeros, Tensor scales, Tensor? g_idx, Tensor? bias, int bits,"
        " int group_size) -> Tensor");
  // gemm with qweight in fragment order (bits 2 or 4). QuantLinear calls it for layers it has converted on a
  // CUDA device; the CPU implementation converts back first (a reference, not a fast path).
  m.def("gemm_fragment_ordered(Tensor x, Tensor qweight, Tensor qzeros, Tensor scales, Tensor? g_idx, Tensor? bias,"
        " int bits, int group_size) -> Tensor");
  // The inner column loop of blocked GPTQ over one block of B columns (see gptq_kernels/gptq.py).
  // weight [rows, B] float32: the block's columns, already updated for the errors of earlier blocks;
  // hinv [B, B] float32: the block's diagonal block of U, the upper Cholesky factor of H^-1.
  // Grids: scale and zero [rows, B] give every column's grid (static groups, group_size -1); when None the
  // op fits a grid (core/grid.h) from the current columns of each group, which requires group_size > 0 and
  // column_offset (the block's first column in the matrix) a multiple of group_size.
  // Returns (q int32, dequantized, err = (w - dequantized) / U[j, j], scale, zero), all [rows, B]; the
  // caller applies W[:, end:] -= err @ U[start:end, end:]. Scales are rounded to scale_dtype before use.
  m.def("gptq_block(Tensor weight, Tensor hinv, int bits, bool sym, int group_size, int column_offset,"
        " Tensor? scale, Tensor? zero, ScalarType scale_dtype) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // GPTQ's factor of a Hessian: for hessian [K, K] float32 (symmetric; only its upper triangle is read),
  // R upper triangular [K, K] with hessian + damp * I = R R^T, and LAPACK's info (0: done; i > 0: not
  // positive definite, R is then meaningless). R^-1 is the upper Cholesky factor of (hessian + damp I)^-1.
  m.def("hessian_factor(Tensor hessian, float damp) -> (Tensor, int)");

  // Binary-coded (BCQ) weights, GPTQT's inference format (gptq_kernels/bcq_format.py, csrc/core/bcq.h):
  // qplanes int32 [planes, K/32, N] (bit j of qplanes[i, w, n] is plane i's sign for input 32w+j, 1 = +1,
  // 0 = -1; 1 <= planes <= 8), alpha [G, planes, N] and offset [G, N] float16/bfloat16/float32, and
  // W^T[k, n] = sum_i alpha[g, i, n] * s_i[k, n] + offset[g, n] with g = k / group_size (-1: one group).
  // Groups are contiguous: act-order layers are stored sorted by group (BCQLinear does it at load).
  // W^T as a dense [K, N] tensor of alpha's dtype.
  m.def("bcq_dequantize(Tensor qplanes, Tensor alpha, Tensor offset, int group_size) -> Tensor");
  // y = x @ W^T + bias for x [..., K] (float16/bfloat16/float32, any strides); y [..., N] has x's dtype.
  m.def("bcq_gemm(Tensor x, Tensor qplanes, Tensor alpha, Tensor offset, Tensor? bias, int group_size) -> Tensor");
}
