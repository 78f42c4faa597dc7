"""The C++ kernel sources that need no torch header compile as C++17 as well as C++20.

Older torch releases (2.11 among them, the one on our GPU build machines) build extensions with -std=c++17, newer
ones with -std=c++20, so a C++20-only construct in a kernel builds here and breaks the build there. Files that
include torch (directly or through a project header) are left out: torch's own headers decide their standard.
"""
import os
import platform
import re
import shutil
import subprocess

import pytest

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
TORCH_HEADER = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10)/', re.M)
PROJECT_HEADER = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def _reaches_torch(path, seen):
    if path in seen:
        return False
    seen.add(path)
    with open(path) as f:
        text = f.read()
    if TORCH_HEADER.search(text):
        return True
    for name in PROJECT_HEADER.findall(text):
        for base in (CSRC, os.path.dirname(path)):
            candidate = os.path.join(base, name)
            if os.path.exists(candidate):
                if _reaches_torch(candidate, seen):
                    return True
                break
    return False


def torch_free_sources():
    found = []
    for folder in ("core", "cpu"):
        for name in sorted(os.listdir(os.path.join(CSRC, folder))):
            path = os.path.join(CSRC, folder, name)
            if name.endswith((".h", ".cpp")) and not _reaches_torch(path, set()):
                found.append(os.path.relpath(path, CSRC))
    return found


def test_the_bit_level_helpers_are_among_the_torch_free_sources():
    sources = torch_free_sources()
    for expected in ("core/bitpack.h", "core/fragment_order.h", "cpu/bcq_lut_tile.h", "cpu/gptq_block_tile.h"):
        assert expected in sources
    assert "core/checks.h" not in sources  # it includes torch


@pytest.mark.parametrize("standard", ["c++17", "c++20"])
def test_torch_free_sources_compile(standard):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    flags = [f"-std={standard}", "-fsyntax-only", "-fopenmp", "-I", CSRC, "-x", "c++"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-DGPTQ_KERNELS_X86")
    jobs = {src: subprocess.Popen([compiler, *flags, os.path.join(CSRC, src)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            for src in torch_free_sources()}
    failures = {}
    for src, job in jobs.items():
        output, _ = job.communicate(timeout=300)
        if job.returncode != 0:
            failures[src] = output[-2000:]
    assert not failures, "\n".join(f"{src} does not compile as {standard}:\n{out}" for src, out in failures.items())
