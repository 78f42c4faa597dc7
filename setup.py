"""Builds gptq_kernels and its compiled extension gptq_kernels._C.

The extension holds CPU kernels always, and CUDA kernels when torch is a CUDA build and a CUDA toolkit
(nvcc) is found; no GPU is needed to compile them. Environment switches:

  GPTQ_KERNELS_CPU_ONLY=1   build the CPU kernels only, even where CUDA could be built
  TORCH_CUDA_ARCH_LIST      GPU architectures to compile for (default "8.0;8.6;8.9;9.0"); 9.0 is built as
                            9.0a, the H100/H200 target whose wgmma the Hopper kernel needs (9.0+PTX stays as
                            given, without that kernel)
  MAX_JOBS                  parallel compile jobs (ninja)
"""
import glob
import os
import platform

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0"


def cuda_build_reason():
    """Returns None when CUDA kernels can be built, else why not."""
    import torch

    if os.environ.get("GPTQ_KERNELS_CPU_ONLY") == "1":
        return "GPTQ_KERNELS_CPU_ONLY=1"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit found (set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda)"
    if not os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")):
        return f"no nvcc under CUDA_HOME={cpp_extension.CUDA_HOME}"
    return None


def hopper_arch_list(arch_list):
    """TORCH_CUDA_ARCH_LIST with compute capability 9.0 built as sm_90a, and whether the Hopper kernel is in the
    build: sm_90a code runs on 9.0 devices only (so does sm_90 code, which it replaces), and it is the only target
    with wgmma. When sm_90 code or PTX is built as well, the driver might load that instead, so the kernel is
    left out (gemm_wgmma.cuh: kWgmmaBuilt)."""
    archs = []
    for arch in arch_list.replace(" ", ";").split(";"):
        arch = "9.0a" if arch == "9.0" else arch
        if arch and arch not in archs:
            archs.append(arch)
    hopper = "9.0a" in archs and not any(a.startswith("9.0") and a != "9.0a" for a in archs)
    return ";".join(archs), hopper


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def build_extension():
    is_x86 = platform.machine().lower() in ("x86_64", "amd64")
    cpu_sources = sources("csrc/*.cpp") + sources("csrc/core/*.cpp") + sources("csrc/cpu/*.cpp")
    if not is_x86:  # the AVX kernels are x86-only; the generic kernel serves other CPUs
        cpu_sources = [s for s in cpu_sources if "avx" not in os.path.basename(s)]
    # at::parallel_for is OpenMP inside ATen's headers: without -fopenmp our loops would run on one thread.
    # The runtime resolves to the libgomp that torch already loaded (same soname).
    cxx_flags = ["-O3", "-fopenmp"] + (["-DGPTQ_KERNELS_X86"] if is_x86 else [])
    link_flags = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]

    reason = cuda_build_reason()
    cuda_sources = sources("csrc/cuda/*.cu")
    if reason is None and cuda_sources:
        archs, hopper = hopper_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS))
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        print(f"gptq_kernels: building CPU and CUDA kernels for TORCH_CUDA_ARCH_LIST={archs}")
        nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"] + (["-DGPTQ_KERNELS_SM90A"] if hopper else [])
        return cpp_extension.CUDAExtension(
            "gptq_kernels._C",
            cpu_sources + cuda_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags + ["-DGPTQ_KERNELS_CUDA"], "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    print(f"gptq_kernels: building CPU kernels only ({reason or 'no CUDA sources'})")
    return cpp_extension.CppExtension(
        "gptq_kernels._C", cpu_sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


setup(
    name="gptq_kernels",
    version="0.1.0",
    description="GPTQ quantization with fused low-bit dequantize+matmul kernels for PyTorch",
    packages=find_packages(include=["gptq_kernels", "gptq_kernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch", "numpy"],
    ext_modules=[build_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
