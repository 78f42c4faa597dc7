// The 3-bit instantiations of the tensor-core GEMV (12 kernels: fp16/bf16 x 3 group classes x 1-8/9-16 rows).
#include "cuda/gemv_tc_kernel.cuh"

namespace gptq_kernels {
namespace cuda {
template void launch_gemv_tc<3>(const FusedGemmParams&, ActType, dim3, cudaStream_t);
}  // namespace cuda
}  // namespace gptq_kernels
