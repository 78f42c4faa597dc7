#include "cpu/isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace gptq_kernels {
namespace cpu {

CpuIsa selected_cpu_isa() {
  const char* env = std::getenv("GPTQ_KERNELS_CPU_ISA");
  const std::string forced = env ? env : "";
  bool has_avx2 = false, has_avx512 = false, has_avx512bf16 = false;
#if defined(GPTQ_KERNELS_X86)
  __builtin_cpu_init();
  has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f");
  has_avx512bf16 = has_avx512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512bf16");
#endif
  TORCH_CHECK(forced.empty() || forced == "generic" || forced == "avx2" || forced == "avx512" || forced == "avx512bf16",
              "GPTQ_KERNELS_CPU_ISA must be generic, avx2, avx512 or avx512bf16, got '", forced, "'");
  TORCH_CHECK(forced != "avx2" || has_avx2, "GPTQ_KERNELS_CPU_ISA=avx2, but this CPU or build lacks AVX2/FMA/F16C");
  TORCH_CHECK(forced != "avx512" || has_avx512, "GPTQ_KERNELS_CPU_ISA=avx512, but this CPU or build lacks AVX-512F");
  TORCH_CHECK(forced != "avx512bf16" || has_avx512bf16,
              "GPTQ_KERNELS_CPU_ISA=avx512bf16, but this CPU or build lacks AVX512_BF16 (with AVX-512F/BW/VL)");
  if (forced == "generic") return CpuIsa::kGeneric;
  if (forced == "avx2") return CpuIsa::kAvx2;
  if (forced == "avx512") return CpuIsa::kAvx512;
  if (forced == "avx512bf16" || has_avx512bf16) return CpuIsa::kAvx512Bf16;
  if (has_avx512) return CpuIsa::kAvx512;
  if (has_avx2) return CpuIsa::kAvx2;
  return CpuIsa::kGeneric;
}

}  // namespace cpu
}  // namespace gptq_kernels
