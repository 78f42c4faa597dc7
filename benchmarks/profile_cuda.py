"""The kernels behind the speed targets, one call each, for Nsight Compute: what bounds each one (DRAM bandwidth,
issue slots, stalls) is what benchmarks/NOTES_cuda.md can only predict without a GPU.

    ncu --clock-control none --profile-from-start off --nvtx --section SpeedOfLight ... \
        python benchmarks/profile_cuda.py          # gpu_check.sh's profile phase
    python benchmarks/profile_cuda.py cpu          # the same calls on the CPU ops: checks this script without a GPU

At 8192 x 8192, group size 128, fp16 activations: cuBLAS fp16 at batch 1 (the bandwidth yardstick), what QuantLinear
runs at batch 1 for 2, 3, 4 and 8 bits, the GEMV kernel on 4-bit weights in checkpoint order at batch 1, 4 bits at
batch 16 and 256, and on an H100/H200 the Hopper kernel at 4 bits and batch 256 and 1024 (not with --no-hopper).
Every case runs twice before the profiler starts (cudaProfilerStart), so that only the measured calls are
profiled; each sits in an NVTX range named after it, and the case names are printed in launch order.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_cuda import quant_linear_gemm, random_gptq, with_env  # noqa: E402
from gptq_kernels import ops  # noqa: E402

GROUP_SIZE = 128


def cases(k, n, device, hopper):
    """name -> call, in launch order."""
    layers = {bits: random_gptq(k, n, bits, GROUP_SIZE, device) for bits in (2, 3, 4, 8)}
    dense = torch.randn(n, k, device=device, dtype=torch.float16)
    xs = {rows: torch.randn(rows, k, device=device, dtype=torch.float16) for rows in (1, 16, 256, 1024)}

    def ours(bits, rows):
        return lambda: quant_linear_gemm(bits)(xs[rows], *layers[bits], None, None, bits, GROUP_SIZE)

    calls = {"cuBLAS fp16, batch 1": lambda: F.linear(xs[1], dense)}
    for bits in (2, 3, 4, 8):
        calls[f"gptq {bits}-bit, batch 1"] = ours(bits, 1)
    calls["gptq 4-bit ckpt order (GEMV kernel), batch 1"] = lambda: ops.gemm(xs[1], *layers[4], None, None, 4,
                                                                             GROUP_SIZE)
    calls["gptq 4-bit, batch 16"] = ours(4, 16)
    calls["gptq 4-bit, batch 256"] = ours(4, 256)
    if hopper:
        for rows in (256, 1024):
            calls[f"gptq 4-bit wgmma, batch {rows}"] = (
                lambda rows=rows: with_env("GPTQ_KERNELS_WGMMA", "1", ours(4, rows)))
    return calls


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device", nargs="?", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--no-hopper", action="store_true", help="leave the Hopper kernel out")
    parser.add_argument("--shape", default="8192x8192", help="KxN")
    args = parser.parse_args()
    k, n = (int(v) for v in args.shape.lower().split("x"))
    cuda = args.device == "cuda"
    # On the CPU the Hopper cases run too (the CPU op ignores GPTQ_KERNELS_WGMMA): this script's own check.
    hopper = not args.no_hopper and (not cuda or torch.cuda.get_device_capability() == (9, 0))
    calls = cases(k, n, args.device, hopper)
    for _ in range(2):
        for call in calls.values():
            call()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    for name, call in calls.items():
        if cuda:
            with torch.cuda.nvtx.range(name):
                call()
        else:
            y = call()
            assert torch.isfinite(y).all(), name
        print(f"profile_cuda: {name}", flush=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
