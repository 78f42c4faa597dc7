// What a build of the extension was made for, as setup.py passed it to the compilers.
#pragma once

#include <algorithm>
#include <string>

// setup.py passes the GPU architectures of the CUDA code as -DGPTQ_KERNELS_CUDA_ARCHS=8.0:8.6:8.9:9.0a, colons
// for TORCH_CUDA_ARCH_LIST's semicolons: the flag goes through a shell, and nvcc splits -D values at commas.
#define GPTQ_KERNELS_STRINGIFY_ARGS(...) #__VA_ARGS__
#define GPTQ_KERNELS_STRINGIFY(...) GPTQ_KERNELS_STRINGIFY_ARGS(__VA_ARGS__)

namespace gptq_kernels {
namespace core {

// "8.0;8.6;8.9;9.0a", or "" in a build without CUDA.
inline std::string built_cuda_archs() {
#ifdef GPTQ_KERNELS_CUDA_ARCHS
  std::string archs = GPTQ_KERNELS_STRINGIFY(GPTQ_KERNELS_CUDA_ARCHS);
  std::replace(archs.begin(), archs.end(), ':', ';');
  return archs;
#else
  return "";
#endif
}

}  // namespace core
}  // namespace gptq_kernels
