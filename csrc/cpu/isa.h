// Which instruction-set variant of the CPU kernels to run, shared by the uniform (gemm.cpp) and BCQ (bcq_ops.cpp)
// kernels so that GPTQ_KERNELS_CPU_ISA means the same for both.
#pragma once

namespace gptq_kernels {
namespace cpu {

// Ordered: each level can run every variant below it.
enum class CpuIsa { kGeneric, kAvx2, kAvx512, kAvx512Bf16 };

// The widest level this CPU and build support, unless GPTQ_KERNELS_CPU_ISA (generic, avx2, avx512, avx512bf16)
// names one: the tests use that to run every variant a machine can execute. Raises for an unknown name or a level
// the CPU lacks. Kernels without an avx512bf16 variant run their avx512 one at that level.
CpuIsa selected_cpu_isa();

}  // namespace cpu
}  // namespace gptq_kernels
