#include "cpu/isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace gptq_kernels {
namespace cpu {

CpuIsa selected_cpu_isa() {
  const char* env = std::getenv("GPTQ_KERNELS_CPU_ISA");
  const std::string forced = env ? env : "";
  bool has_avx2 = false, has_avx512 = false;
#if defined(GPTQ_KERNELS_X86)
  __builtin_cpu_init();
  has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f");
#endif
  TORCH_CHECK(forced.empty() || forced == "generic" || forced == "avx2" || forced == "avx512",
              "GPTQ_KERNELS_CPU_ISA must be generic, avx2 or avx512, got '", forced, "'");
  TORCH_CHECK(forced != "avx2" || has_avx2, "GPTQ_KERNELS_CPU_ISA=avx2, but this CPU or build lacks AVX2/FMA/F16C");
  TORCH_CHECK(forced != "avx512" || has_avx512, "GPTQ_KERNELS_CPU_ISA=avx512, but this CPU or build lacks AVX-512F");
  if (forced == "avx512" || (forced.empty() && has_avx512)) return CpuIsa::kAvx512;
  if (forced == "avx2" || (forced.empty() && has_avx2)) return CpuIsa::kAvx2;
  return CpuIsa::kGeneric;
}

}  // namespace cpu
}  // namespace gptq_kernels
