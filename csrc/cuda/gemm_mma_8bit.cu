// The 8-bit instantiations of the tensor-core kernel (6 kernels: fp16/bf16 x 16, 32, 64 rows per CTA).
#include "cuda/gemm_mma_kernel.cuh"

namespace gptq_kernels {
namespace cuda {
template cudaError_t launch_mma<8>(const FusedGemmParams&, ActType, int, dim3, cudaStream_t);
}  // namespace cuda
}  // namespace gptq_kernels
