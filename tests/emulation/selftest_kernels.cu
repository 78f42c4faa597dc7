// Kernels with deliberate synchronisation bugs (and their fixed forms), run by the harness's "selftest" op so
// that tests/test_cuda_emulated.py can check the emulator catches each kind of bug it claims to catch.
#include "cuda/gemm_mma_kernel.cuh"
#include "cuda/wgmma_ops.cuh"

namespace selftest {

constexpr int kThreads = 128;

// out[t] = the value thread t + 1 wrote to shared memory: correct only with the barrier in between.
__global__ void neighbour_exchange(int* out, bool barrier) {
  __shared__ int slots[kThreads];
  slots[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  if (barrier) __syncthreads();
  out[threadIdx.x] = slots[(threadIdx.x + 1) % kThreads];
}

// out[t] = src[t] through an asynchronous copy to shared memory: correct only if the copy is waited for.
__global__ void async_copy(const float* src, float* out, bool wait) {
  float* stage = reinterpret_cast<float*>(gptq_kernels::cuda::dynamic_shared_memory());
  if (threadIdx.x < kThreads / 4) gptq_kernels::cuda::cp_async_16(stage + threadIdx.x * 4, src + threadIdx.x * 4, true);
  gptq_kernels::cuda::cp_async_commit();
  if (wait) gptq_kernels::cuda::cp_async_wait<0>();
  __syncthreads();
  out[threadIdx.x] = stage[threadIdx.x];
}

// A full-mask shuffle after lane 5 has returned: hangs or is undefined on a GPU.
__global__ void shuffle_after_exit(int* out) {
  if (threadIdx.x % 32 == 5) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

// Reads one element past the end of `src` (n elements) in the last thread.
__global__ void read_past_end(const int* src, int* out, int n) {
  out[threadIdx.x] = src[threadIdx.x < static_cast<unsigned>(n) ? threadIdx.x : n];
}

// Every warp loads the 16 x 16 matrix of 16-bit element indices (row * 16 + column) in shared memory with
// ldmatrix.x4, addressed as the tensor-core kernel addresses its A tiles; warp w writes register w of each lane
// as low half + 256 * high half.
__global__ void ldmatrix_quadrants(int* out) {
  __shared__ __align__(16) uint16_t matrix[16 * 16];
  for (int i = threadIdx.x; i < 16 * 16; i += kThreads) matrix[i] = static_cast<uint16_t>(i);
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t r[4];
  gptq_kernels::cuda::ldmatrix_x4(r, matrix + (lane % 16) * 16 + (lane / 16) * 8);
  out[threadIdx.x] = static_cast<int>((r[warp] & 0xffffu) + 256u * (r[warp] >> 16));
}

// One wgmma m64n64k16 of the warpgroup: A all ones, B = the k16 slice 2 of a 64 x 64 tile of x[n][k] = (k + n) % 17
// in the 128-byte swizzled layout, so every row of D is the column sums of that slice. Thread i writes
// d[4 (i % 8) + 1] (column 8 (i % 8) + 2 (i % 4) + 1), read after the wait or, with wait == false, before it.
__global__ void wgmma_column_sums(float* out, bool wait) {
  using namespace gptq_kernels::cuda;
  unsigned char* raw = dynamic_shared_memory();
  unsigned char* tile = raw + (kSwizzleAtomBytes - shared_address(raw) % kSwizzleAtomBytes) % kSwizzleAtomBytes;
  for (int i = threadIdx.x; i < 64 * 64; i += kThreads) {
    const int n = i / 64, k = i % 64;
    const __half v = __float2half(static_cast<float>((k + n) % 17));
    std::memcpy(tile + swizzled_piece_offset(n, k / 8) + (k % 8) * 2, &v, 2);
  }
  fence_proxy_async_shared();
  __syncthreads();
  uint32_t a[4];
  for (uint32_t& r : a) r = 0x3c003c00u;  // 1.0 in both halves
  float d[32];
  for (float& v : d) v = 0.f;
  wgmma_fence();
  WgmmaOps<__half>::mma<64>(d, a, swizzled_k_major_descriptor(shared_address(tile) + 2 * 32));
  wgmma_commit();
  if (wait) wgmma_wait<0>();
  out[threadIdx.x] = d[4 * (threadIdx.x % 8) + 1];
  wgmma_wait<0>();
}

}  // namespace selftest

// Runs case `name` ("exchange", "exchange_no_barrier", "async_copy", "async_copy_no_wait", "shuffle_after_exit",
// "read_past_end", "ldmatrix", "wgmma", "wgmma_no_wait") and returns its 128 outputs as floats.
std::vector<float> run_selftest(const std::string& name) {
  using namespace selftest;
  std::vector<int> ints(kThreads, -1);
  std::vector<float> floats(kThreads, -1.f);
  if (name == "exchange" || name == "exchange_no_barrier") {
    GPTQ_LAUNCH(1, kThreads, 0, nullptr, neighbour_exchange)(ints.data(), name == "exchange");
  } else if (name == "async_copy" || name == "async_copy_no_wait") {
    std::vector<float> src(kThreads);
    for (int i = 0; i < kThreads; ++i) src[i] = static_cast<float>(i);
    GPTQ_LAUNCH(1, kThreads, kThreads * sizeof(float), nullptr, async_copy)(src.data(), floats.data(),
                                                                           name == "async_copy");
    return floats;
  } else if (name == "wgmma" || name == "wgmma_no_wait") {
    GPTQ_LAUNCH(1, kThreads, 64 * 128 + 1024, nullptr, wgmma_column_sums)(floats.data(), name == "wgmma");
    return floats;
  } else if (name == "shuffle_after_exit") {
    GPTQ_LAUNCH(1, kThreads, 0, nullptr, shuffle_after_exit)(ints.data());
  } else if (name == "ldmatrix") {
    GPTQ_LAUNCH(1, kThreads, 0, nullptr, ldmatrix_quadrants)(ints.data());
  } else if (name == "read_past_end") {
    std::unique_ptr<int[]> src(new int[kThreads - 1]());
    GPTQ_LAUNCH(1, kThreads, 0, nullptr, read_past_end)(src.get(), ints.data(), kThreads - 1);
  } else {
    throw std::runtime_error("unknown selftest " + name);
  }
  for (int i = 0; i < kThreads; ++i) floats[i] = static_cast<float>(ints[i]);
  return floats;
}
