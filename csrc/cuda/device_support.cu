// check_device_supported (device_support.h): asks the CUDA runtime whether a kernel of this extension has an
// image for the current device, rather than repeating the driver's rules for which code runs where (same major
// version and no higher minor for SASS, any later device for PTX, exactly one device for sm_90a).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>

#include "core/build_info.h"
#include "cuda/device_support.h"

namespace gptq_kernels {
namespace cuda {
namespace {

// Compiled, like every kernel of the extension, for each architecture setup.py was given: it has an image for a
// device exactly when the others do.
__global__ void kernel_image_probe() {}

constexpr int kMaxCheckedDevices = 64;
std::array<std::atomic<bool>, kMaxCheckedDevices> device_checked{};

}  // namespace

void check_device_supported(const char* op) {
  const int device = c10::cuda::current_device();
  const bool cacheable = device >= 0 && device < kMaxCheckedDevices;
  if (cacheable && device_checked[device].load(std::memory_order_relaxed)) return;
  cudaFuncAttributes attributes;
  const cudaError_t error = cudaFuncGetAttributes(&attributes, kernel_image_probe);
  if (error == cudaErrorNoKernelImageForDevice || error == cudaErrorInvalidDeviceFunction ||
      error == cudaErrorUnsupportedPtxVersion) {
    (void)cudaGetLastError();  // not sticky: leave no stale error for the next launch check
    int major = 0, minor = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    TORCH_CHECK(false, op, ": this build of gptq_kernels has no CUDA code for GPU ", device,
                " (compute capability ", major, ".", minor, "): it was built for ", core::built_cuda_archs(),
                " (CUDA says: ", cudaGetErrorString(error), "). Rebuild it for this GPU, e.g. TORCH_CUDA_ARCH_LIST=",
                major, ".", minor, " pip install --no-build-isolation -e . (from a source checkout).");
  }
  C10_CUDA_CHECK(error);
  if (cacheable) device_checked[device].store(true, std::memory_order_relaxed);
}

}  // namespace cuda
}  // namespace gptq_kernels
