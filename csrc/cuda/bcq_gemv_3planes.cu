// The 3-plane instantiations of the BCQ lookup-table kernel (9 kernels: fp16/bf16/fp32 x 1, 2, 4 rows per CTA).
#include "cuda/bcq_gemv_kernel.cuh"

namespace gptq_kernels {
namespace cuda {
template void launch_bcq_gemv<3>(const BcqGemvParams&, FloatType, int, dim3, cudaStream_t);
}  // namespace cuda
}  // namespace gptq_kernels
