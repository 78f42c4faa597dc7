// The 2-bit instantiations of the Hopper kernel (4 kernels: fp16/bf16 x 64/128 batch rows per CTA).
#include "cuda/gemm_wgmma_kernel.cuh"

namespace gptq_kernels {
namespace cuda {
template cudaError_t launch_gemm_wgmma<2>(const FusedGemmParams&, ActType, int, dim3, cudaStream_t);
}  // namespace cuda
}  // namespace gptq_kernels
