"""CUDA benchmark: the fused GPTQ gemm (and the binary-coded bcq_gemm) against cuBLAS fp16 (F.linear) and PyTorch's
int4 kernel, same run.

Shapes are the linear layers of Llama-2-7B, Llama-3-8B and Llama-2-70B (K x N = in x out features). For each
shape and batch every contender is captured into a CUDA graph of several calls and the graph is replayed
between CUDA events, so the table shows GPU time rather than Python launch overhead; contenders take turns
within each round (interleaved) and the table shows medians. Every call of a graph reads a different copy of
the weights and of x, and the copies together exceed the L2 cache (50 MB on H100), as a model's layers would.
"GB/s" is the weight bytes (packed weights, scales, zeros) read per second, "%copy" that rate against the
measured device-to-device copy bandwidth. "gptq N-bit" is what QuantLinear runs (2- and 4-bit weights in fragment
order, 3-bit in the checkpoint order: the tensor-core GEMV up to 16 rows); "ckpt order" the same 2- and 4-bit
weights in checkpoint order and "3-bit g_idx" the 3-bit layer with its g_idx passed, which take the GEMV kernel on
the CUDA cores up to 8 rows and the tensor-core kernel from 9: the kernels side by side. On an H100/H200, "N-bit
wgmma" is the Hopper kernel (GPTQ_KERNELS_WGMMA=1) on the weights of "gptq N-bit", from 17 rows; "4-bit
dequant+mm" what gemm does past 256 rows (dequantize, then cuBLAS).

    python benchmarks/bench_cuda.py                                   # everything (a few minutes on an H100)
    python benchmarks/bench_cuda.py --shapes 8192x8192 --batches 1,16 --bits 4
    python benchmarks/bench_cuda.py --max-minutes 4 --out /tmp/results
    python benchmarks/bench_cuda.py --report gpu_results/bench_cuda.json   # render a saved run again, no GPU
    python benchmarks/bench_cuda.py --dry-run --shapes 576x96 --batches 1,300  # the contenders' calls, on the CPU

The report ends with issue #4's speed targets at 8192 x 8192 and larger (benchmarks/cuda_report.py), each judged at
its worst shape, for what QuantLinear runs and for our fastest contender there.
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
from cuda_report import describe, print_table, report  # noqa: E402

import gptq_kernels  # noqa: E402
from gptq_kernels import ops  # noqa: E402

SHAPES = {  # name: (K, N)
    "llama2-7b qkv/o 4096x4096": (4096, 4096),
    "llama2-7b up/gate 4096x11008": (4096, 11008),
    "llama2-7b down 11008x4096": (11008, 4096),
    "llama3-8b up/gate 4096x14336": (4096, 14336),
    "llama3-8b down 14336x4096": (14336, 4096),
    "llama3-8b qkv 4096x6144": (4096, 6144),
    "llama3-8b kv 4096x1024": (4096, 1024),
    "llama2-70b qkv/o 8192x8192": (8192, 8192),
    "llama2-70b up/gate 8192x28672": (8192, 28672),
    "llama2-70b down 28672x8192": (28672, 8192),
}
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
ROTATE_BYTES = 128 << 20  # weight copies per contender fill at least this much: 2.5x the 50 MB L2 of H100/H200
MIN_CALLS = 8             # calls per captured graph, so graph launch cost is spread thin
DEQUANT_CONTENDER_MIN_BATCH = 64  # from here on the dequantize + cuBLAS path is timed too (4-bit)
GEMV_TC_MAX_BATCH = 16  # up to here what QuantLinear runs without g_idx takes the tensor-core GEMV
WGMMA_MIN_BATCH = 17  # from here the Hopper kernel takes what QuantLinear runs without g_idx, when asked for


def quant_linear_gemm(bits: int):
    """The op QuantLinear runs on the GPU: gemm_fragment_ordered for 2- and 4-bit weights (random words are valid
    weights in either order), gemm for 3- and 8-bit weights (checkpoint order)."""
    return ops.gemm_fragment_ordered if ops.has_fragment_order(bits) else ops.gemm


def with_env(name: str, value: str, fn):
    """fn() with environment variable `name` set to `value` meanwhile (gemm reads GPTQ_KERNELS_WGMMA at every call,
    and a captured CUDA graph keeps the path it was captured with)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn()
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def copies_for(nbytes: int) -> int:
    return max(1, -(-ROTATE_BYTES // max(nbytes, 1)))


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), median of 10 copies of 1 GiB."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for i in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * (1 << 30) / statistics.median(times)


def random_gptq(k: int, n: int, bits: int, group_size: int, device="cuda"):
    """Random words are valid packed weights and zeros for any bit width; the values do not matter for speed."""
    groups = -(-k // group_size)
    qweight = torch.randint(-2**31, 2**31 - 1, (k * bits // 32, n), dtype=torch.int32, device=device)
    qzeros = torch.randint(-2**31, 2**31 - 1, (groups, n * bits // 32), dtype=torch.int32, device=device)
    scales = (torch.rand(groups, n, device=device) * 0.01 + 0.001).half()
    return qweight, qzeros, scales


def gptq_bytes(k: int, n: int, bits: int, group_size: int) -> int:
    groups = -(-k // group_size)
    return k * n * bits // 8 + groups * n * 2 + groups * n * bits // 8


def random_bcq(k: int, n: int, planes: int, group_size: int, device="cuda"):
    """Random sign planes, alpha and offset of a binary-coded (BCQ) layer; the values do not matter for speed."""
    groups = -(-k // group_size)
    qplanes = torch.randint(-2**31, 2**31 - 1, (planes, k // 32, n), dtype=torch.int32, device=device)
    alpha = (torch.rand(groups, planes, n, device=device) * 0.01 + 0.001).half()
    offset = (torch.randn(groups, n, device=device) * 0.01).half()
    return qplanes, alpha, offset


def bcq_bytes(k: int, n: int, planes: int, group_size: int) -> int:
    groups = -(-k // group_size)
    return k * n * planes // 8 + groups * n * 2 * (planes + 1)


def first_line(error: Exception) -> str:
    """An error's first line, at most 200 characters (torch lists every dispatch key after it)."""
    return str(error).splitlines()[0][:200]


def int4mm_weights(k: int, n: int, group_size: int, copies: int, device="cuda"):
    """PyTorch's tinygemm int4 weights, or the reason they cannot be built. The packing op changed signature
    across versions (int32 [N, K] before 2.5, uint8 [N, K/2] after), so both are tried."""
    inner_k_tiles = 8
    made, last_error = [], None
    for _ in range(copies):
        w = torch.randint(0, 16, (n, k), dtype=torch.int32, device=device)
        packed = None
        for candidate in (lambda: ((w[:, ::2] << 4) | w[:, 1::2]).to(torch.uint8), lambda: w):
            try:
                packed = torch.ops.aten._convert_weight_to_int4pack(candidate(), inner_k_tiles)
                break
            except (RuntimeError, TypeError, AttributeError) as error:
                last_error = first_line(error)
        if packed is None:
            return None, f"_convert_weight_to_int4pack failed: {last_error}"
        scales_zeros = torch.rand(k // group_size, n, 2, device=device).to(torch.bfloat16)
        made.append((packed, scales_zeros))
    try:
        torch.ops.aten._weight_int4pack_mm(torch.randn(1, k, device=device, dtype=torch.bfloat16), made[0][0],
                                           group_size, made[0][1])
    except (RuntimeError, TypeError, AttributeError) as error:
        return None, f"_weight_int4pack_mm failed: {first_line(error)}"
    return made, None


def capture(fn, calls: int):
    """A CUDA graph running fn(0), ..., fn(calls - 1), or None (eager timing) if capture fails."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(min(calls, 3)):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn(i)
        return graph
    except RuntimeError:
        return None


def time_contenders(contenders, rounds: int, warmup: int = 2):
    """Median seconds per call of each contender: (fn, calls) -> graph replays (or eager loops), interleaved."""
    runners = {}
    for name, (fn, calls) in contenders.items():
        graph = capture(fn, calls)
        runners[name] = (graph.replay if graph is not None else (lambda fn=fn, calls=calls: [fn(i) for i in range(calls)]),
                         calls, graph is not None)
    samples = {name: [] for name in contenders}
    for r in range(warmup + rounds):
        events = {}
        for name, (run, calls, _) in runners.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            events[name] = (start, end, calls)
        torch.cuda.synchronize()
        if r >= warmup:
            for name, (start, end, calls) in events.items():
                samples[name].append(start.elapsed_time(end) / 1e3 / calls)
    return {name: statistics.median(v) for name, v in samples.items()}, {n: g for n, (_, _, g) in runners.items()}


class ShapeWeights:
    """The weights every contender of one K x N layer reads, each in as many copies as rotate the L2 cache
    (`copies`: bytes -> count; one each in a dry run)."""

    def __init__(self, k, n, bits_list, group_size, bcq_planes, device, copies, log):
        self.k, self.n, self.group_size = k, n, group_size
        self.fp16_bytes = k * n * 2
        self.dense = [torch.randn(n, k, device=device, dtype=torch.float16) for _ in range(copies(self.fp16_bytes))]
        self.ours = {bits: [random_gptq(k, n, bits, group_size, device)
                            for _ in range(copies(gptq_bytes(k, n, bits, group_size)))] for bits in bits_list}
        self.bcq = {planes: [random_bcq(k, n, planes, group_size, device)
                             for _ in range(copies(bcq_bytes(k, n, planes, group_size)))] for planes in bcq_planes}
        self.int4_bytes = k * n // 2 + (k // group_size) * n * 4
        self.int4, int4_error = (None, "4-bit not benchmarked") if 4 not in bits_list else \
            int4mm_weights(k, n, group_size, copies(self.int4_bytes), device)
        if int4_error:
            log(f"  (torch int4 kernel skipped: {int4_error})")
        # The sequential g_idx of the "gptq 3-bit g_idx" contender.
        self.g_idx3 = torch.arange(k, device=device, dtype=torch.int32) // (k if group_size == -1 else group_size)


def batch_contenders(w: ShapeWeights, xs, hopper: bool):
    """Every contender at one batch (the rows of xs, rotated over its copies): name -> (fn(i), calls per graph), and
    name -> weight bytes read per call."""
    k, n, group_size, batch = w.k, w.n, w.group_size, xs[0].shape[0]
    contenders, nbytes = {}, {}

    def add(name, fn, copies, weight_bytes):
        contenders[name] = (fn, max(MIN_CALLS, copies))  # every copy once per graph, and at least MIN_CALLS calls
        nbytes[name] = weight_bytes

    add("cuBLAS fp16", lambda i: F.linear(xs[i % len(xs)], w.dense[i % len(w.dense)]), len(w.dense), w.fp16_bytes)
    if w.int4 is not None:
        xb = [x.bfloat16() for x in xs]
        int4 = w.int4
        add("torch int4 (bf16)", lambda i: torch.ops.aten._weight_int4pack_mm(
            xb[i % len(xb)], int4[i % len(int4)][0], group_size, int4[i % len(int4)][1]), len(int4), w.int4_bytes)
    for bits, layers in w.ours.items():
        gemm = quant_linear_gemm(bits)
        add(f"gptq {bits}-bit", lambda i, layers=layers, bits=bits, gemm=gemm: gemm(
            xs[i % len(xs)], *layers[i % len(layers)], None, None, bits, group_size), len(layers),
            gptq_bytes(k, n, bits, group_size))
    for bits in (2, 4):
        # The same weights in checkpoint order: what fragment order gains. Up to 16 rows that is the
        # tensor-core GEMV (fragment order only) against the GEMV kernel (1-8 rows) or the tensor-core kernel
        # (9-16); from 17 rows the tensor-core kernel reading either order (4-bit only there, to save time).
        if bits in w.ours and (bits == 4 or batch <= GEMV_TC_MAX_BATCH):
            layers = w.ours[bits]
            add(f"gptq {bits}-bit ckpt order", lambda i, layers=layers, bits=bits: ops.gemm(
                xs[i % len(xs)], *layers[i % len(layers)], None, None, bits, group_size), len(layers),
                gptq_bytes(k, n, bits, group_size))
    if 3 in w.ours and batch <= GEMV_TC_MAX_BATCH:
        # 3-bit weights have no other order: passing their (sequential) g_idx, which the tensor-core GEMV does
        # not take, runs the GEMV kernel (1-8 rows) or the tensor-core kernel (9-16) on the same weights.
        layers = w.ours[3]
        add("gptq 3-bit g_idx", lambda i, layers=layers: ops.gemm(
            xs[i % len(xs)], *layers[i % len(layers)], w.g_idx3, None, 3, group_size), len(layers),
            gptq_bytes(k, n, 3, group_size))
    if hopper and batch >= WGMMA_MIN_BATCH:
        # The Hopper kernel (wgmma) on the same weights as "gptq N-bit", not yet what gemm picks by itself.
        for bits in (2, 3, 4, 8):
            if bits in w.ours:
                layers, gemm = w.ours[bits], quant_linear_gemm(bits)
                add(f"gptq {bits}-bit wgmma", lambda i, layers=layers, bits=bits, gemm=gemm: with_env(
                    "GPTQ_KERNELS_WGMMA", "1", lambda: gemm(
                        xs[i % len(xs)], *layers[i % len(layers)], None, None, bits, group_size)),
                    len(layers), gptq_bytes(k, n, bits, group_size))
    if 4 in w.ours and batch >= DEQUANT_CONTENDER_MIN_BATCH:
        # What gemm does past the tensor-core kernel's range (dequantize, then cuBLAS), timed next to it:
        # where the two cross is where gemm_fused.cu's kMmaMaxRows belongs.
        layers = w.ours[4]
        add("gptq 4-bit dequant+mm", lambda i, layers=layers: xs[i % len(xs)] @ ops.dequantize(
            *layers[i % len(layers)][:3], None, 4, group_size), len(layers), gptq_bytes(k, n, 4, group_size))
    for planes, layers in w.bcq.items():
        add(f"bcq {planes}-plane", lambda i, layers=layers: ops.bcq_gemm(
            xs[i % len(xs)], *layers[i % len(layers)], None, group_size), len(layers),
            bcq_bytes(k, n, planes, group_size))
    return contenders, nbytes


def bench_shape(k, n, batches, bits_list, group_size, rounds, deadline, log, bcq_planes=(), wgmma=True):
    w = ShapeWeights(k, n, bits_list, group_size, bcq_planes, "cuda", copies_for, log)
    # The wgmma contenders (sm_90a code runs on compute capability 9.0 only).
    hopper = wgmma and torch.cuda.get_device_capability() == (9, 0)
    results = []
    for batch in batches:
        if time.time() > deadline:
            log(f"  (time budget spent: skipping K={k} N={n} batch={batch} and later)")
            break
        xs = [torch.randn(batch, k, device="cuda", dtype=torch.float16) for _ in range(4)]
        contenders, nbytes = batch_contenders(w, xs, hopper)
        times, graphed = time_contenders(contenders, rounds)
        base = times["cuBLAS fp16"]
        for name, t in times.items():
            results.append({"k": k, "n": n, "batch": batch, "kernel": name, "us": t * 1e6,
                            "speedup_vs_fp16": base / t, "weight_gbps": nbytes[name] / t / 1e9,
                            "cuda_graph": graphed[name]})
        del contenders
        torch.cuda.empty_cache()
    return results


def dry_run(shapes, batches, bits_list, group_size, bcq_planes, log, wgmma=True):
    """Every contender bench_shape would time, built on the CPU (one copy of each weight) and called twice, its
    output checked for shape and finiteness: the benchmark's own code paths, checked without a GPU. Times nothing;
    the wgmma contenders are included (the CPU op ignores GPTQ_KERNELS_WGMMA)."""
    for k, n in shapes:
        w = ShapeWeights(k, n, bits_list, group_size, bcq_planes, "cpu", lambda nbytes: 1, log)
        for batch in batches:
            xs = [torch.randn(batch, k, dtype=torch.float16) for _ in range(2)]
            contenders, nbytes = batch_contenders(w, xs, hopper=wgmma)
            for name, (fn, calls) in contenders.items():
                for i in range(2):
                    y = fn(i)
                    if tuple(y.shape) != (batch, n) or not torch.isfinite(y).all():
                        raise RuntimeError(f"{name} at K={k} N={n} batch={batch}: output {tuple(y.shape)}, "
                                           f"finite: {bool(torch.isfinite(y).all())}")
                assert calls >= MIN_CALLS and nbytes[name] > 0
            log(f"dry run K={k} N={n} batch={batch}: " + ", ".join(contenders))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES.values()),
                        help="comma-separated KxN (in_features x out_features)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    parser.add_argument("--bits", default="2,3,4,8", help="comma-separated bit widths of our kernel")
    parser.add_argument("--bcq-planes", default="2,3",
                        help="comma-separated plane counts of the binary-coded (bcq_gemm) contenders; empty for none")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per contender (medians reported)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop starting new measurements after this long (the rest is reported as skipped)")
    parser.add_argument("--out", default=None,
                        help="directory for bench_cuda.json, bench_cuda.png and bench_cuda.txt (default "
                             "benchmarks/results, or with --report the directory of its JSON)")
    parser.add_argument("--report", metavar="JSON", default=None,
                        help="measure nothing: render the table, summary, plot and issue #4 targets of a saved "
                             "bench_cuda.json again (no GPU needed), e.g. of a run stopped before its end")
    parser.add_argument("--no-hopper", action="store_true",
                        help="leave out the Hopper kernel's contenders (gpu_check.sh does when it failed its first "
                             "check, so that a fault in it cannot end the whole run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="time nothing: build every contender on the CPU and call it, to check the benchmark's "
                             "code on a machine without a GPU (use small --shapes)")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in shape.lower().split("x")) for shape in args.shapes.split(",")]
    bits_list = [int(b) for b in args.bits.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    bcq_planes = [int(p) for p in args.bcq_planes.split(",") if p]
    lines = []

    def log(line=""):
        print(line, flush=True)
        lines.append(line)

    if args.report:
        with open(args.report) as f:
            run = json.load(f)
        out = args.out or os.path.dirname(os.path.abspath(args.report))
        os.makedirs(out, exist_ok=True)
        for line in describe(run):
            log(line)
        log(f"(rendered from {args.report}; measured with: {run.get('command', '?')})")
        report(run, out, log)
        with open(os.path.join(out, "bench_cuda.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        return
    if args.dry_run:
        dry_run(shapes, batches, bits_list, args.group_size,
                bcq_planes if ops.has_kernel("cpu", "bcq_gemm") else [], log, wgmma=not args.no_hopper)
        return
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU")
    if not ops.has_kernel("cuda"):
        sys.exit("the extension has no CUDA kernels: build it with CUDA_HOME set (see setup.py)")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)

    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else float("inf")
    run = machine_header(torch.get_num_threads())
    run.update(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
               version=gptq_kernels.__version__, copy_gbps=copy_bandwidth() / 1e9, group_size=args.group_size,
               rounds=args.rounds, command=" ".join(sys.argv), results=[])
    for line in describe(run):
        log(line)
    if not ops.has_kernel("cuda", "bcq_gemm"):
        bcq_planes = []
    for k, n in shapes:
        log(f"K={k} N={n} ...")
        shape_results = bench_shape(k, n, batches, bits_list, args.group_size, args.rounds, deadline, log, bcq_planes,
                                    wgmma=not args.no_hopper)
        print_table(shape_results, run["copy_gbps"], log)
        run["results"] += shape_results
        torch.cuda.empty_cache()
        # Rewritten after every shape, so a run stopped from outside (a time limit) keeps what it measured.
        write_json(os.path.join(out, "bench_cuda.json"), run)
    log(f"results: {os.path.join(out, 'bench_cuda.json')}")
    run["targets"] = report(run, out, log, table=False)
    write_json(os.path.join(out, "bench_cuda.json"), run)
    with open(os.path.join(out, "bench_cuda.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
