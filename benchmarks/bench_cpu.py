"""CPU kernel benchmark: fused GPTQ dequantize+matmul against dense F.linear and torch's int4 CPU kernel.

Shapes are Llama-2-7B's linear layers (K x N = in x out). Every contender runs in the same process, in
turn within each round (interleaved), and the table shows medians. Packed weights rotate over several
copies so that together they exceed the last-level cache, as a model's layers would.

    python benchmarks/bench_cpu.py                      # full table
    python benchmarks/bench_cpu.py --shapes 4096x11008 --batches 1 --rounds 10
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_header, time_interleaved, write_json  # noqa: E402

import gptq_kernels  # noqa: E402
from gptq_kernels import ops  # noqa: E402

CACHE_BYTES = 64 << 20  # rotate weight copies until they fill at least this much (L3 here is 32 MiB)


def copies_for(nbytes: int) -> int:
    return max(1, -(-CACHE_BYTES // max(nbytes, 1)))


def random_gptq(k: int, n: int, bits: int, group_size: int):
    groups = -(-k // group_size)
    words = k * bits // 32
    qweight = torch.randint(-2**31, 2**31 - 1, (words, n), dtype=torch.int32)
    qzeros = torch.randint(-2**31, 2**31 - 1, (groups, n * bits // 32), dtype=torch.int32)
    scales = (torch.rand(groups, n) * 0.01 + 0.001).half()
    return qweight, qzeros, scales


def bench_shape(k: int, n: int, batch: int, bits_list, group_size: int, rounds: int):
    contenders, bytes_moved = {}, {}
    # Dense baselines.
    for name, dtype in (("F.linear fp32", torch.float32), ("F.linear bf16", torch.bfloat16)):
        w_bytes = k * n * torch.tensor([], dtype=dtype).element_size()
        ws = [torch.randn(n, k, dtype=dtype) for _ in range(copies_for(w_bytes))]
        x = torch.randn(batch, k, dtype=dtype)
        contenders[name] = (lambda r, ws=ws, x=x: F.linear(x, ws[r % len(ws)]))
        bytes_moved[name] = w_bytes
    # torch's own int4 CPU kernel (bf16 activations, 4-bit only; K must be a multiple of the group size).
    try:
        if k % group_size:
            raise RuntimeError(f"K = {k} is not a multiple of group_size = {group_size}")
        int4_bytes = k * n // 2 + (k // group_size) * n * 4
        packs = []
        for _ in range(copies_for(int4_bytes)):
            w_int = torch.randint(0, 16, (n, k), dtype=torch.int32)
            packs.append((torch.ops.aten._convert_weight_to_int4pack_for_cpu(w_int, 2),
                          torch.randn(k // group_size, n, 2, dtype=torch.bfloat16)))
        x_bf16 = torch.randn(batch, k, dtype=torch.bfloat16)
        contenders["torch int4 (bf16)"] = (lambda r, packs=packs, x=x_bf16: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, packs[r % len(packs)][0], group_size, packs[r % len(packs)][1]))
        bytes_moved["torch int4 (bf16)"] = int4_bytes
    except (RuntimeError, AttributeError) as error:
        print(f"  (torch int4 CPU kernel unavailable: {error})")
    # Ours.
    for bits in bits_list:
        q_bytes = k * n * bits // 8 + (-(-k // group_size)) * n * (2 + bits / 8)
        for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            # Copies of its own: sharing the fp32 contender's would leave them in the cache for this one.
            layers = [random_gptq(k, n, bits, group_size) for _ in range(copies_for(int(q_bytes)))]
            x = torch.randn(batch, k, dtype=dtype)
            name = f"gptq {bits}-bit ({tag})"
            contenders[name] = (lambda r, layers=layers, x=x, bits=bits: ops.gemm(
                x, *layers[r % len(layers)], None, None, bits, group_size))
            bytes_moved[name] = q_bytes
    times = time_interleaved(contenders, rounds=rounds)
    return times, bytes_moved


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096",
                        help="comma-separated KxN (in_features x out_features)")
    parser.add_argument("--batches", default="1,16,128", help="comma-separated batch sizes (rows of x)")
    parser.add_argument("--bits", default="2,3,4", help="comma-separated bit widths of our kernel")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per contender (medians reported)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if not ops.has_kernel("cpu"):
        sys.exit("the compiled CPU kernels are not available: build with `make build`")

    header = machine_header(torch.get_num_threads())
    header["command"] = "python " + " ".join(sys.argv)
    print(f"gptq_kernels {gptq_kernels.__version__} CPU benchmark | {header['cpu']} | commit {header['commit']} | "
          f"{header['date']} | torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})")
    print(f"command: {header['command']}")
    print(f"group_size={args.group_size}; medians of {args.rounds} interleaved rounds; speedup vs F.linear fp32; "
          "GB/s = weight bytes read per second")
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.lower().split("x"))
        for batch in (int(b) for b in args.batches.split(",")):
            times, nbytes = bench_shape(k, n, batch, [int(b) for b in args.bits.split(",")], args.group_size,
                                        args.rounds)
            base = times["F.linear fp32"]
            print(f"\nK={k} N={n} batch={batch}")
            print(f"  {'kernel':<22}{'ms':>10}{'speedup':>10}{'GB/s':>9}")
            for name, t in times.items():
                print(f"  {name:<22}{t * 1e3:>10.3f}{base / t:>9.2f}x{nbytes[name] / t / 1e9:>9.1f}")
                rows.append({"k": k, "n": n, "batch": batch, "kernel": name, "ms": t * 1e3,
                             "speedup_vs_fp32": base / t, "weight_gbps": nbytes[name] / t / 1e9})
    if args.json:
        write_json(args.json, {**header, "torch": torch.__version__, "group_size": args.group_size, "rows": rows})


if __name__ == "__main__":
    main()
