// Which instruction-set variant of the CPU kernels to run. Each kernel with per-ISA variants (gemv, the BCQ
// lookup tables, gptq_block) asks here once, so they all follow the same rule.
#pragma once

namespace gptq_kernels {
namespace cpu {

enum class CpuIsa { kGeneric, kAvx2, kAvx512 };

// The widest instruction set this CPU and build support, unless the environment variable GPTQ_KERNELS_CPU_ISA
// (generic, avx2, avx512) names one: the tests use it to run every variant a machine can execute. Throws when
// the variable names an unknown set or one this CPU lacks.
CpuIsa selected_cpu_isa();

}  // namespace cpu
}  // namespace gptq_kernels
