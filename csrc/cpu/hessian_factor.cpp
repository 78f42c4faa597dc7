// CPU `hessian_factor`: R upper triangular with H + damp * I = R R^T, the one factorisation GPTQ needs
// (gptq_kernels/gptq.py, hessian_factor). With J the reversal permutation, J (H + damp I) J = L L^T and
// R = J L J.
//
// torch.linalg.cholesky computes the same L, but around LAPACK it copies the input into a column-major
// buffer, zeroes the unused triangle of the result and leaves R = J L J to two more full copies: for a
// 4096-wide Hessian those passes cost as much as the factorisation. Here the reversal, the damping and the
// layout are folded into one copy in and one copy out around LAPACK's spotrf, called directly from the
// LAPACK that torch's own library carries. Where that library exports no spotrf (or the self-test below
// fails), the op falls back to torch.linalg.cholesky_ex.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstddef>
#include <tuple>

extern "C" {
// Fortran LAPACK. Weak: resolved from libtorch_cpu when it exports the symbol, null otherwise. The trailing
// length of the character argument is what gfortran-built LAPACKs expect; MKL ignores it.
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info, size_t uplo_len)
    __attribute__((weak));
}

namespace gptq_kernels {
namespace cpu {
namespace {

// Rows per parallel task of the copies (a 4096-wide row is 16 KiB).
constexpr int64_t kGrainRows = 16;

// Factors a 2x2 matrix through spotrf_ and checks the answer, so that a LAPACK with another calling
// convention (64-bit integers, say) is never trusted with real data.
bool lapack_usable() {
  static const bool usable = [] {
    if (spotrf_ == nullptr) return false;
    float a[4] = {4.0f, 2.0f, 2.0f, 3.0f};  // column-major; upper factor [[2, 1], [0, sqrt(2)]]
    const int n = 2;
    int info = -1;
    spotrf_("U", &n, a, &n, &info, 1);
    return info == 0 && a[0] == 2.0f && a[2] == 1.0f && std::fabs(a[3] - std::sqrt(2.0f)) < 1e-6f;
  }();
  return usable;
}

std::tuple<at::Tensor, int64_t> factor_with_torch(const at::Tensor& hessian, double damp) {
  at::Tensor reversed = hessian.flip({0, 1});
  reversed.diagonal().add_(damp);
  auto [lower, info] = at::linalg_cholesky_ex(reversed);
  return {lower.flip({0, 1}).contiguous(), info.item<int64_t>()};
}

std::tuple<at::Tensor, int64_t> hessian_factor_cpu(const at::Tensor& hessian, double damp) {
  constexpr const char* op = "gptq_kernels.hessian_factor";
  TORCH_CHECK(hessian.dim() == 2 && hessian.size(0) == hessian.size(1), op,
              ": hessian must be a square matrix, got shape ", hessian.sizes());
  TORCH_CHECK(hessian.scalar_type() == at::kFloat, op, ": hessian must be float32, got ", hessian.scalar_type());
  TORCH_CHECK(hessian.device().is_cpu(), op, ": expected a CPU tensor here, got ", hessian.device());
  TORCH_CHECK(std::isfinite(damp) && damp >= 0, op, ": damp must be finite and non-negative, got ", damp);
  const int64_t k = hessian.size(0);
  TORCH_CHECK(k <= (int64_t{1} << 30), op, ": hessian is too large (", k, " columns)");
  if (k == 0) return {at::empty({0, 0}, hessian.options()), 0};
  if (!lapack_usable()) return factor_with_torch(hessian, damp);

  const at::Tensor h = hessian.contiguous();
  const float* ph = h.data_ptr<float>();
  // A row-major buffer holding J (H + damp I) J in its lower triangle, which is the upper triangle LAPACK
  // reads when it sees the buffer as column-major; the other triangle is never read.
  at::Tensor work = at::empty({k, k}, h.options());
  float* pw = work.data_ptr<float>();
  at::parallel_for(0, k, kGrainRows, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* source = ph + (k - 1 - i) * k + (k - 1);  // row k-1-i of H, read backwards
      float* row = pw + i * k;
      for (int64_t j = 0; j <= i; ++j) row[j] = source[-j];
      row[i] += static_cast<float>(damp);
    }
  });
  const int n = static_cast<int>(k);
  int info = 0;
  spotrf_("U", &n, pw, &n, &info, 1);  // column-major U with U^T U = the buffer: row-major, that is L

  // R[i, j] = L[k-1-i, k-1-j] on and above the diagonal, zero below.
  at::Tensor r = at::empty({k, k}, h.options());
  float* pr = r.data_ptr<float>();
  at::parallel_for(0, k, kGrainRows, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* source = pw + (k - 1 - i) * k + (k - 1);
      float* row = pr + i * k;
      for (int64_t j = 0; j < i; ++j) row[j] = 0.0f;
      for (int64_t j = i; j < k; ++j) row[j] = source[-j];
    }
  });
  return {r, static_cast<int64_t>(info)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gptq_kernels, CPU, m) { m.impl("hessian_factor", &hessian_factor_cpu); }

}  // namespace cpu
}  // namespace gptq_kernels
