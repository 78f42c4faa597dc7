"""Builds gptq_kernels and its compiled extension gptq_kernels._C.

The extension holds CPU kernels always, and CUDA kernels when torch is a CUDA build and a CUDA toolkit
(nvcc) is found; no GPU is needed to compile them. Environment switches:

  GPTQ_KERNELS_CPU_ONLY=1   build the CPU kernels only, even where CUDA could be built
  TORCH_CUDA_ARCH_LIST      GPU architectures to compile for; by default those of the GPUs in sight (a
                            build on a GPU machine covers exactly its GPUs, as torch's own extensions do),
                            or "8.0;8.6;8.9;9.0" where none is; 9.0 is built as 9.0a, the H100/H200 target
                            whose wgmma the Hopper kernel needs (9.0+PTX stays as given, without that kernel)
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


def default_cuda_archs(device_capabilities):
    """The architectures to build when TORCH_CUDA_ARCH_LIST is not set: the compute capabilities of the GPUs in
    sight, or where there are none (a CPU-only machine, a container build) DEFAULT_CUDA_ARCHS. A fixed list alone
    would leave out the GPU it was built on whenever that GPU is not in it (a T4 is 7.5, a B200 10.0, an
    RTX 50xx 12.0), and every op there would fail with "no kernel image is available"."""
    archs = []
    for major, minor in device_capabilities:
        arch = f"{major}.{minor}"
        if arch not in archs:
            archs.append(arch)
    return ";".join(archs) if archs else DEFAULT_CUDA_ARCHS


def visible_device_capabilities():
    """(major, minor) of every GPU torch sees here; none where the driver cannot answer."""
    import torch

    try:
        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    except (RuntimeError, AssertionError) as error:  # a driver too old for torch's CUDA, a broken install
        print(f"gptq_kernels: cannot read the GPUs' compute capabilities ({error}); using the default list")
        return []


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


def cuda_archs_define(archs):
    """The flag that records the architectures in the extension (gptq_kernels.ops.cuda_archs(), and the error an op
    raises on a GPU they do not cover; csrc/core/build_info.h reads it back): colons for semicolons, as the flag
    passes through a shell and nvcc splits -D values at commas."""
    return f"-DGPTQ_KERNELS_CUDA_ARCHS={archs.replace(';', ':')}"


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
        requested = os.environ.get("TORCH_CUDA_ARCH_LIST") or default_cuda_archs(visible_device_capabilities())
        archs, hopper = hopper_arch_list(requested)
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        print(f"gptq_kernels: building CPU and CUDA kernels for TORCH_CUDA_ARCH_LIST={archs}")
        built_archs = [cuda_archs_define(archs)]
        nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"] + built_archs + \
            (["-DGPTQ_KERNELS_SM90A"] if hopper else [])
        return cpp_extension.CUDAExtension(
            "gptq_kernels._C",
            cpu_sources + cuda_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags + ["-DGPTQ_KERNELS_CUDA"] + built_archs, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    print(f"gptq_kernels: building CPU kernels only ({reason or 'no CUDA sources'})")
    return cpp_extension.CppExtension(
        "gptq_kernels._C", cpu_sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


if __name__ == "__main__":  # pip and `python setup.py` run it as __main__; tests import the functions above
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
