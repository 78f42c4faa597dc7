"""Static instruction counts of the CUDA kernels, from their SASS: what benchmarks/NOTES_cuda.md quotes, on any
machine with nvcc (no GPU needed).

Compiles each source to a cubin for one architecture, disassembles it with cuobjdump (from $CUDA_HOME/bin, PATH,
or the copy that ships with triton) and prints, per kernel, registers, spills, total instructions and the
instruction mix. With --between OP, also the mix of stretch --block (from 0) of the code cut after every
--per-block occurrences of opcode OP: for the tensor-core GEMV (4 HMMA per 32-row block and row tile) that is one
block's decode and mma, per thread, when the stretch lies inside a load batch (not at its start, where the group
change sits):

    python benchmarks/sass_counts.py csrc/cuda/gemv_tc_2bit.cu --between HMMA --per-block 4 --kernel half
    python benchmarks/sass_counts.py csrc/cuda/gemv_tc_3bit.cu --between HMMA --per-block 4 --block 2
    python benchmarks/sass_counts.py csrc/cuda/gemm_wgmma_4bit.cu --arch sm_90a --between HGMMA --per-block 4

These are static counts along straight-line code, not measurements: which branches run, and how fast, only a
GPU can tell.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_tool(name: str) -> str | None:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates = [os.path.join(cuda_home, "bin", name), shutil.which(name)]
    try:
        import triton

        candidates += glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.path.exists(c)), None)


def opcode(instruction: str) -> str:
    """The opcode without predicate and modifiers: '@!P0 LDG.E.128.CONSTANT R4, ...' -> 'LDG'."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0].split(".")[0]


def kernels_of(sass: str) -> dict[str, list[str]]:
    parts = re.split(r"\s+Function : (\S+)", sass)
    return {name: re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", body) for name, body in zip(parts[1::2], parts[2::2])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="CUDA sources under csrc/cuda")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--kernel", default="", help="only kernels whose mangled name contains this")
    parser.add_argument("--between", default="", help="also print the mix of one block, delimited by this opcode")
    parser.add_argument("--per-block", type=int, default=1, help="occurrences of the --between opcode per block")
    parser.add_argument("--block", type=int, default=1, help="which stretch to count (0 is the first)")
    args = parser.parse_args()
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    if nvcc is None or cuobjdump is None:
        sys.exit(f"needs nvcc and cuobjdump (found nvcc={nvcc}, cuobjdump={cuobjdump})")
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources:
            cubin = os.path.join(tmp, os.path.basename(source) + ".cubin")
            # sm_90a (the Hopper kernel's wgmma) as setup.py builds it: the -gencode form, and the define that says so.
            number = args.arch.removeprefix("sm_")
            target = [f"-gencode=arch=compute_{number},code=sm_{number}", "-DGPTQ_KERNELS_SM90A"] \
                if number.endswith("a") else [f"-arch={args.arch}"]
            built = subprocess.run([nvcc, "-cubin", "-o", cubin, *target, "-O3", "-std=c++17",
                                    "--expt-relaxed-constexpr", "-I", os.path.join(ROOT, "csrc"), source,
                                    "-Xptxas", "-v"], capture_output=True, text=True)
            if built.returncode != 0:
                sys.exit(built.stderr)
            resources = dict(re.findall(r"Compiling entry function '(\S+)'.*?\n(.*?Used \d+ registers[^\n]*)",
                                        built.stderr, re.S))
            sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
            for name, instructions in kernels_of(sass).items():
                if args.kernel not in name:
                    continue
                usage = resources.get(name, "")
                registers = re.search(r"Used (\d+) registers", usage)
                spills = re.search(r"(\d+) bytes spill stores", usage)
                mix = collections.Counter(opcode(i) for i in instructions)
                print(f"{os.path.basename(source)} {name}\n  registers {registers.group(1) if registers else '?'}, "
                      f"spill stores {spills.group(1) if spills else '?'} bytes, {len(instructions)} instructions: "
                      + " ".join(f"{op} {n}" for op, n in mix.most_common(12)))
                if args.between:
                    at = [i for i, ins in enumerate(instructions) if opcode(ins) == args.between]
                    first, last = args.block * args.per_block, (args.block + 1) * args.per_block
                    if len(at) > last:
                        span = collections.Counter(opcode(i) for i in instructions[at[first]:at[last]])
                        print(f"  one block (from {args.between} {first + 1} to {last + 1}): {at[last] - at[first]} "
                              "instructions: " + " ".join(f"{op} {n}" for op, n in span.most_common()))


if __name__ == "__main__":
    main()
