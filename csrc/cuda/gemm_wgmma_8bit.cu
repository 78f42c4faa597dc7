// The 8-bit instantiations of the Hopper kernel (2 kernels: fp16/bf16, 64 batch rows per CTA).
#include "cuda/gemm_wgmma_kernel.cuh"

namespace gptq_kernels {
namespace cuda {
template cudaError_t launch_gemm_wgmma<8>(const FusedGemmParams&, ActType, int, dim3, cudaStream_t);
}  // namespace cuda
}  // namespace gptq_kernels
