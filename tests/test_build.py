"""The GPU architectures a build covers: setup.py's choice of them, and the record of them the extension carries
(gptq_kernels.ops.cuda_archs(), and the error every CUDA op raises on a GPU they do not cover)."""
import importlib.util
import os
import re
import shutil
import subprocess

import pytest

from gptq_kernels import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = re.compile(r"^\d+\.\d+[af]?(\+PTX)?$")


@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module: its functions, without running setup() (that happens only as __main__)."""
    spec = importlib.util.spec_from_file_location("gptq_kernels_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_archs_are_those_of_the_gpus_in_sight(setup_py):
    assert setup_py.default_cuda_archs([(12, 0)]) == "12.0"  # an RTX 50xx: not in the fixed list
    assert setup_py.default_cuda_archs([(8, 6), (7, 5), (8, 6)]) == "8.6;7.5"  # each once, in device order
    assert setup_py.default_cuda_archs([]) == setup_py.DEFAULT_CUDA_ARCHS == "8.0;8.6;8.9;9.0"


@pytest.mark.parametrize("given, built, hopper", [
    ("9.0", "9.0a", True),
    ("8.0;8.6 9.0", "8.0;8.6;9.0a", True),
    ("9.0;9.0", "9.0a", True),
    ("8.9;9.0+PTX", "8.9;9.0+PTX", False),  # PTX of 9.0 might be loaded instead of sm_90a code
    ("12.0", "12.0", False),
])
def test_hopper_arch_list(setup_py, given, built, hopper):
    assert setup_py.hopper_arch_list(given) == (built, hopper)


@pytest.mark.parametrize("requested, capabilities, expected", [
    (None, [(12, 0)], "12.0"),
    (None, [(9, 0), (8, 9)], "9.0a;8.9"),
    (None, [], "8.0;8.6;8.9;9.0a"),
    ("8.0;9.0", [(12, 0)], "8.0;9.0a"),  # an explicit list wins over the GPUs in sight
])
def test_the_build_covers_the_gpus_in_sight_unless_told_otherwise(setup_py, monkeypatch, requested, capabilities,
                                                                   expected):
    if setup_py.cuda_build_reason() is not None:
        pytest.skip(f"no CUDA build here: {setup_py.cuda_build_reason()}")
    if requested is None:
        monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    else:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", requested)
    monkeypatch.setattr(setup_py, "visible_device_capabilities", lambda: capabilities)
    extension = setup_py.build_extension()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == expected  # what torch's build reads
    for compiler in ("cxx", "nvcc"):
        assert setup_py.cuda_archs_define(expected) in extension.extra_compile_args[compiler]
    assert ("-DGPTQ_KERNELS_SM90A" in extension.extra_compile_args["nvcc"]) == ("9.0a" in expected)


def _read_back(compiler, flags, tmp_path, suffix):
    """What core/build_info.h makes of `flags`, compiled through a shell as the build's ninja does."""
    source = tmp_path / f"main{suffix}"
    source.write_text('#include <cstdio>\n#include "core/build_info.h"\n'
                      'int main() { std::printf("[%s]", gptq_kernels::core::built_cuda_archs().c_str()); }\n')
    binary = tmp_path / f"main{suffix}.out"
    command = f"{compiler} -std=c++17 -I {ROOT}/csrc {flags} {source} -o {binary}"
    subprocess.run(command, shell=True, check=True, capture_output=True, timeout=300)
    return subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("compiler", ["c++", "nvcc"])
def test_the_recorded_archs_survive_the_shell_and_both_compilers(setup_py, tmp_path, compiler):
    if compiler == "nvcc":
        home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        path = os.path.join(home, "bin", "nvcc")
        if not os.path.exists(path):
            pytest.skip("no nvcc")
        compiler, suffix = path, ".cu"
    else:
        compiler, suffix = shutil.which("c++") or shutil.which("g++"), ".cpp"
        if compiler is None:
            pytest.skip("no C++ compiler")
    archs = "8.0;8.6;8.9+PTX;9.0a;10.0;12.0f"
    assert _read_back(compiler, setup_py.cuda_archs_define(archs), tmp_path, suffix) == f"[{archs}]"
    assert _read_back(compiler, "", tmp_path, suffix) == "[]"  # a build without CUDA


def test_the_extension_names_the_archs_it_was_built_for():
    if not ops.compiled_available():
        assert ops.cuda_archs() == []
        return
    archs = ops.cuda_archs()
    assert bool(archs) == ops.has_kernel("cuda")  # recorded exactly when there is CUDA code
    assert all(ARCH.match(arch) for arch in archs), archs
