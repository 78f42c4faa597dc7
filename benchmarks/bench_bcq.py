"""CPU benchmark of the binary-coded (BCQ) kernel: bcq_gemm against the uniform GPTQ gemm of the same bit width
(2 planes vs 2 bits, 3 planes vs 3 bits) and dense fp32 F.linear.

Shapes: Llama-2-7B's up projection (4096x11008) and SmolLM2-135M's (576x1536, 1536x576), K x N = in x out.
All contenders run in one process, in turn within each round (interleaved), fp32 activations, group size 128;
the table shows medians. Weights rotate over copies larger than the last-level cache, as a model's layers would.
With one thread the clock is time.thread_time (CPU time of the calling thread: other jobs on a shared machine do
not inflate it); with more threads, wall time (time.perf_counter).

    python benchmarks/bench_bcq.py                          # 1 and all threads, batch 1 and 16
    python benchmarks/bench_bcq.py --threads 1 --batches 1 --rounds 50
    GPTQ_KERNELS_CPU_ISA=avx2 python benchmarks/bench_bcq.py --out benchmarks/results --append   # another ISA

GPTQ_KERNELS_CPU_ISA (generic, avx2, avx512) forces the instruction set of both our kernels (BCQ and uniform).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_header, write_json  # noqa: E402

import gptq_kernels  # noqa: E402
from gptq_kernels import ops  # noqa: E402

CACHE_BYTES = 64 << 20  # rotate weight copies until they fill at least this much (L3 here is 32 MiB)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def copies_for(nbytes: int) -> int:
    return max(1, -(-CACHE_BYTES // max(nbytes, 1)))


def random_gptq(k, n, bits, group_size):
    groups = -(-k // group_size)
    return (torch.randint(-2**31, 2**31 - 1, (k * bits // 32, n), dtype=torch.int32),
            torch.randint(-2**31, 2**31 - 1, (groups, n * bits // 32), dtype=torch.int32),
            (torch.rand(groups, n) * 0.01 + 0.001).half())


def random_bcq(k, n, planes, group_size):
    groups = -(-k // group_size)
    return (torch.randint(-2**31, 2**31 - 1, (planes, k // 32, n), dtype=torch.int32),
            (torch.rand(groups, planes, n) * 0.01 + 0.001).half(), (torch.randn(groups, n) * 0.01).half())


def best_isa() -> str:
    """The instruction set our kernels pick on this CPU without GPTQ_KERNELS_CPU_ISA (cpu/bcq_ops.cpp)."""
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if {"avx2", "fma", "f16c"} <= set(flags) else "generic"


def time_interleaved(contenders, rounds, clock, warmup=3):
    samples = {name: [] for name in contenders}
    for r in range(warmup + rounds):
        for name, fn in contenders.items():
            start = clock()
            fn(r)
            elapsed = clock() - start
            if r >= warmup:
                samples[name].append(elapsed)
    return {name: statistics.median(v) for name, v in samples.items()}


def bench(k, n, batch, bits_list, group_size, rounds, clock):
    contenders = {}
    ws = [torch.randn(n, k) for _ in range(copies_for(k * n * 4))]
    x = torch.randn(batch, k)
    contenders["F.linear fp32"] = lambda r: F.linear(x, ws[r % len(ws)])
    for bits in bits_list:
        nbytes = k * n * bits // 8
        gptq = [random_gptq(k, n, bits, group_size) for _ in range(copies_for(nbytes))]
        bcq = [random_bcq(k, n, bits, group_size) for _ in range(copies_for(nbytes))]
        contenders[f"gptq {bits}-bit"] = lambda r, L=gptq, bits=bits: ops.gemm(x, *L[r % len(L)], None, None, bits,
                                                                             group_size)
        contenders[f"bcq {bits}-plane"] = lambda r, L=bcq: ops.bcq_gemm(x, *L[r % len(L)], None, group_size)
    return time_interleaved(contenders, rounds, clock)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x11008,576x1536,1536x576", help="comma-separated KxN")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes (rows of x)")
    parser.add_argument("--bits", default="2,3", help="bit widths = plane counts to compare")
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}", help="comma-separated torch thread counts")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=31, help="timed rounds per contender (medians reported)")
    parser.add_argument("--out", default=None, help="write bench_bcq.json and bench_bcq.txt to this directory "
                                                    f"(the recorded runs used {os.path.relpath(RESULTS)})")
    parser.add_argument("--append", action="store_true", help="add this run to the files in --out")
    args = parser.parse_args()
    if not ops.has_kernel("cpu", "bcq_gemm"):
        sys.exit("the compiled CPU kernels are not available: build with `make build`")

    lines = []

    def log(line=""):
        print(line, flush=True)
        lines.append(line)

    header = machine_header(torch.get_num_threads())
    header["command"] = "python " + " ".join(sys.argv)
    header["torch"] = torch.__version__
    header["isa"] = os.environ.get("GPTQ_KERNELS_CPU_ISA") or best_isa()
    log(f"gptq_kernels {gptq_kernels.__version__} BCQ CPU benchmark | {header['cpu']} | commit {header['commit']} | "
        f"{header['date']} | torch {torch.__version__} | our kernels: {header['isa']}")
    log(f"command: {header['command']}")
    log(f"group_size={args.group_size}; fp32 activations; medians of {args.rounds} interleaved rounds; "
        "1 thread: thread CPU time, more: wall time; in brackets: time / time of the uniform kernel of the same bits")
    bits_list = [int(b) for b in args.bits.split(",")]
    columns = ["F.linear fp32"] + [name for b in bits_list for name in (f"gptq {b}-bit", f"bcq {b}-plane")]
    log("\n| K x N | batch | threads | " + " | ".join(columns) + " |")
    log("|" + "---|" * (3 + len(columns)))
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        clock = time.thread_time if threads == 1 else time.perf_counter
        for shape in args.shapes.split(","):
            k, n = (int(v) for v in shape.lower().split("x"))
            for batch in (int(b) for b in args.batches.split(",")):
                times = bench(k, n, batch, bits_list, args.group_size, args.rounds, clock)
                cells = []
                for name in columns:
                    ms = times[name] * 1e3
                    cell = f"{ms:.3f}"
                    ratio = None
                    if name.startswith("bcq"):
                        ratio = times[name] / times[name.replace("bcq", "gptq").replace("-plane", "-bit")]
                        cell += f" ({ratio:.2f}x)"
                    cells.append(cell)
                    rows.append({"k": k, "n": n, "batch": batch, "threads": threads, "kernel": name, "ms": ms,
                                 "vs_uniform_same_bits": ratio})
                log(f"| {k} x {n} | {batch} | {threads} | " + " | ".join(cells) + " |")
    if args.out:
        json_path = os.path.join(args.out, "bench_bcq.json")
        runs = []
        if args.append and os.path.exists(json_path):
            with open(json_path) as f:
                runs = json.load(f)["runs"]
        write_json(json_path, {"runs": runs + [{**header, "group_size": args.group_size, "rows": rows}]})
        with open(os.path.join(args.out, "bench_bcq.txt"), "a" if args.append else "w") as f:
            f.write(("\n" if args.append else "") + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
