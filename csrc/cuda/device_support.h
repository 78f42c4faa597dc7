// Whether the extension's CUDA code can run on the GPU an op is about to use.
#pragma once

namespace gptq_kernels {
namespace cuda {

// Checks, once per device, that the build holds code the current device can run (TORCH_CUDA_ARCH_LIST at build
// time covers it), and otherwise raises an error that names the device's compute capability, the architectures
// built and how to rebuild; without it such a GPU fails at its first launch with CUDA's bare "no kernel image is
// available for execution on the device". Every CUDA op calls it after making its tensors' device current.
void check_device_supported(const char* op);

}  // namespace cuda
}  // namespace gptq_kernels
