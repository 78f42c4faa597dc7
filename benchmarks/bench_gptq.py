"""Time to GPTQ-quantize one layer: quantize_weight (blocked op) vs the textbook per-column loop.

The textbook contender is the reference GPTQ implementation's algorithm (IST-DASLab gptq.py,
``fasterquant``): Cholesky, cholesky_inverse and Cholesky again for the factor, then blocks of 128 columns
whose inner loop runs column by column in Python, with the same lazy-batch GEMM between blocks. Both get
the same weight, Hessian and settings; runs are interleaved after a warm-up and the medians compared.

    python benchmarks/bench_gptq.py                 # 4096 x 4096, 4-bit, group size 128
    python benchmarks/bench_gptq.py --size 1024 --repeats 5 --save
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gptq_kernels import quantize_weight  # noqa: E402
from gptq_kernels.grid import fit_grid, quantize_to_grid  # noqa: E402


def textbook_gptq(W, H, bits=4, group_size=128, sym=True, blocksize=128, percdamp=0.01, grids=None):
    """GPTQ as the reference implementation writes it (float32, Python loop over the columns of a block).

    Returns the quantized weight as floats; grids, when a list, receives the (scale, zero) of each group.
    """
    W = W.clone().float()
    H = H.clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns, device=W.device)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    scale = zero = None
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if (i1 + i) % group_size == 0:
                scale, zero = fit_grid(W[:, i1 + i:i1 + i + group_size], bits, sym)
                if grids is not None:
                    grids.append((scale, zero))
            q = quantize_to_grid(w[:, None], scale, zero, bits)[:, 0]
            q = scale * (q - zero)
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def make_layer(size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(size, size, generator=g) * 0.02
    # A Hessian like a layer's: low-rank correlated activations plus noise, a few outlier channels.
    B = torch.randn(size, size // 4, generator=g)
    H = B @ B.t() / (size // 4) + 0.05 * torch.eye(size)
    outliers = torch.randperm(size, generator=g)[:8]
    H[outliers, :] *= 10
    H[:, outliers] *= 10
    return W, H


def machine(device: str = "cpu") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = "?"
    if device.startswith("cuda"):
        cpu = torch.cuda.get_device_name(torch.device(device))
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, commit {commit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="the layer is size x size (default 4096)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each contender (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: CPU time of the process (all threads), which other jobs "
                             "on a shared machine disturb far less (default wall)")
    parser.add_argument("--device", default="cpu", help="where both contenders run: cpu or cuda (default cpu)")
    parser.add_argument("--save", action="store_true", help="append the table to benchmarks/results/bench_gptq.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    W, H = (t.to(args.device) for t in make_layer(args.size))
    contenders = {
        "textbook per-column loop": lambda: textbook_gptq(W, H, args.bits, args.group_size),
        # Each contender's natural result: the textbook's quantized float matrix, quantize_weight's packed
        # checkpoint tensors.
        "quantize_weight (gptq_block op)": lambda: quantize_weight(W, H, bits=args.bits,
                                                                   group_size=args.group_size),
    }
    for fn in contenders.values():  # warm-up (allocations, thread pool)
        fn()
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():  # interleaved so that load changes hit both alike
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    base = statistics.median(times["textbook per-column loop"])
    lines = [f"GPTQ of one {args.size}x{args.size} layer, {args.bits}-bit, group size {args.group_size}, "
             f"median of {args.repeats}, {args.clock} time ({time.strftime('%Y-%m-%d')}, {machine(args.device)})", "",
             f"| contender | median {args.clock} time (s) | speed-up |", "|---|---|---|"]
    for name, t in times.items():
        median = statistics.median(t)
        lines.append(f"| {name} | {median:.2f} | {base / median:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.save:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_gptq.md")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    main()
