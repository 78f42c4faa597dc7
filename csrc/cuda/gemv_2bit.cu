// The 2-bit instantiations of the small-batch kernel (8 kernels: fp16/bf16 x 1, 2, 4, 8 rows per CTA).
#include "cuda/gemv_kernel.cuh"

namespace gptq_kernels {
namespace cuda {
template void launch_gemv<2>(const FusedGemmParams&, ActType, int, dim3, cudaStream_t);
}  // namespace cuda
}  // namespace gptq_kernels
