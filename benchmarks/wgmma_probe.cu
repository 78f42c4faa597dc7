// Checks, on an H100/H200, the three layout assumptions the Hopper kernel (csrc/cuda/gemm_wgmma_kernel.cuh) rests
// on, one at a time, with the kernel's own helpers (csrc/cuda/wgmma_ops.cuh): the register layouts of A and of the
// accumulators, and the shared-memory B operand reached through swizzled_k_major_descriptor and the 128-byte
// swizzle (swizzled_piece_offset), for each k16 slice of a 64-value row and for N = 64 and 128. A few seconds; when
// test_gemm_hopper_kernel fails, this says which assumption the hardware disagrees with.
//
//   nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -I csrc benchmarks/wgmma_probe.cu -o wgmma_probe
//   ./wgmma_probe        # exit status 0 when every check passed
//
// tests/test_cuda_emulated.py also builds it on the CPU emulator (tests/emulation), whose wgmma model the kernel's
// emulated tests rely on: there it must pass too.
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda/wgmma_ops.cuh"

using namespace gptq_kernels::cuda;

namespace {

constexpr int kThreads = 128;  // one warpgroup
bool cuda_failed = false;      // a launch or copy failed: nothing was checked

// Values below 2048 are exact in fp16.
__host__ __device__ inline uint16_t half_bits(int v) {
  const __half h = __float2half(static_cast<float>(v));
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

// One wgmma m64nNk16 on a 64-row B tile (N rows of 64 K values, swizzled) with A and B from the probe's patterns,
// accumulators from zero; writes thread i's N / 2 accumulators to out[i * N / 2 ...].
//   mode 0 (A probe): A[m][k] = 16 m + k, B[k][n] = 1 where k == n % 16: D[m][n] = A[m][n % 16].
//   mode 1 (B probe): A[m][k] = 1 where k == m % 16, B[k][n] = x[n][16 slice + k] = 64 n + 16 slice + k (mod 2048):
//   D[m][n] = B[m % 16][n].
template <int N>
__global__ void probe(int mode, int slice, float* out) {
  unsigned char* raw = dynamic_shared_memory();
  unsigned char* tile = raw + (kSwizzleAtomBytes - shared_address(raw) % kSwizzleAtomBytes) % kSwizzleAtomBytes;
  for (int i = threadIdx.x; i < N * 64; i += kThreads) {
    const int n = i / 64, k = i % 64;
    const int v = mode == 0 ? (k % 16 == n % 16 && k / 16 == slice ? 1 : 0) : (64 * n + k) % 2048;
    const uint16_t bits = half_bits(v);
    std::memcpy(tile + swizzled_piece_offset(n, k / 8) + (k % 8) * 2, &bits, 2);
  }
  fence_proxy_async_shared();
  __syncthreads();
  // A fragment of lane (g, t) in warp w (rows 16 w + g, + 8; columns 2t, 2t + 1, + 8), as the kernel assumes.
  const int w = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  uint32_t a[4];
  for (int r = 0; r < 4; ++r) {
    const int row = 16 * w + g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
    uint16_t lo, hi;
    if (mode == 0) {
      lo = half_bits(16 * row + col), hi = half_bits(16 * row + col + 1);
    } else {
      lo = half_bits(col == row % 16 ? 1 : 0), hi = half_bits(col + 1 == row % 16 ? 1 : 0);
    }
    a[r] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
  }
  float d[N / 2];
  for (float& v : d) {
    v = 0.f;
    fence_operand(v);
  }
  wgmma_fence();
  WgmmaOps<__half>::mma<N>(d, a, swizzled_k_major_descriptor(shared_address(tile) + 32 * slice));
  wgmma_commit();
  wgmma_wait<0>();
  for (float& v : d) fence_operand(v);
  for (int i = 0; i < N / 2; ++i) out[threadIdx.x * (N / 2) + i] = d[i];
}

// Runs one probe and compares every accumulator with what the assumed layouts give; prints the first mismatches.
template <int N>
bool run(int mode, int slice) {
  const size_t count = static_cast<size_t>(kThreads) * N / 2, bytes = count * sizeof(float);
  const size_t shared = static_cast<size_t>(N) * 128 + 1024;
  std::vector<float> host(count, -1.f);
#ifdef GPTQ_KERNELS_EMULATION
  float* out = host.data();
  GPTQ_LAUNCH(1, kThreads, shared, nullptr, probe<N>)(mode, slice, out);
#else
  float* out = nullptr;
  cudaMalloc(&out, bytes);
  cudaFuncSetAttribute(probe<N>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
  probe<N><<<1, kThreads, shared>>>(mode, slice, out);
  const cudaError_t error = cudaMemcpy(host.data(), out, bytes, cudaMemcpyDeviceToHost);
  cudaFree(out);
  if (error != cudaSuccess) {
    if (!cuda_failed) std::printf("CUDA error: %s\n", cudaGetErrorString(error));
    cuda_failed = true;
    return false;
  }
#endif
  int wrong = 0;
  for (int i = 0; i < kThreads; ++i) {
    const int w = i / 32, g = i % 32 / 4, t = i % 4;
    for (int j = 0; j < N / 2; ++j) {
      const int m = 16 * w + g + 8 * (j % 4 / 2), n = 8 * (j / 4) + 2 * t + j % 2;  // d[4c + 2h + e]
      const float expected = mode == 0 ? static_cast<float>(16 * m + n % 16)
                                       : static_cast<float>((64 * n + 16 * slice + m % 16) % 2048);
      const float got = host[static_cast<size_t>(i) * N / 2 + j];
      if (got != expected && ++wrong <= 4) {
        std::printf("  N=%d %s probe, slice %d: thread %d d[%d] (row %d, column %d) = %g, expected %g\n", N,
                    mode == 0 ? "A/D" : "B", slice, i, j, m, n, got, expected);
      }
    }
  }
  std::printf("N=%d %s layout, k16 slice %d: %s\n", N, mode == 0 ? "A and accumulator" : "B (swizzled, descriptor)",
              slice, wrong == 0 ? "ok" : "WRONG");
  return wrong == 0;
}

}  // namespace

#ifdef GPTQ_KERNELS_EMULATION
// The two runtime calls the launch makes, answered as the emulator harness does.
extern "C" cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute, int value) {
  gptq_emulation::detail::Runtime::get().max_dynamic_shared[func] = value;
  return cudaSuccess;
}
extern "C" cudaError_t cudaGetLastError() { return cudaSuccess; }
#endif

int main() {
  bool ok = true;
  for (int slice = 0; slice < 4; ++slice) {
    ok = run<64>(0, slice) && ok;
    ok = run<64>(1, slice) && ok;
    ok = run<128>(1, slice) && ok;
  }
  ok = run<128>(0, 0) && ok;
  std::printf("wgmma probe: %s\n", ok            ? "every layout as assumed"
                                   : cuda_failed ? "could not run (CUDA error above)"
                                                 : "SOME LAYOUT DIFFERS from the assumptions");
  return ok ? 0 : 1;
}
