"""Runs every CUDA kernel of gptq_kernels once on small inputs, for compute-sanitizer (memcheck, racecheck):

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitize_cuda.py
    python benchmarks/sanitize_cuda.py cpu      # the same calls on the CPU: checks this script without a GPU
    python benchmarks/sanitize_cuda.py --only-hopper   # just the Hopper kernel (gpu_check.sh's first look at it)
    python benchmarks/sanitize_cuda.py --no-hopper     # everything else

Covers pack, unpack, permute_rows, dequantize (3 output dtypes), the GEMV kernel (1, 2, 4 and 8 rows per CTA), the tensor-core
kernel (16, 32 and 64 rows per CTA, two row tiles), each with and without split-K, a partial column tile, the
per-row group path of unsorted act-order g_idx and a bias, and the dequantize + cuBLAS path; for 2 and 4 bits
the same with the weight in fragment order (gemm_fragment_ordered, to_fragment_order), and without g_idx up to 16
rows (the tensor-core GEMV: 2 and 4 bits in fragment order, 3 bits in the checkpoint order; one and two row
tiles, groups of 128 and 32 rows, N = 160: a partial column tile) and, on an H100/H200, from 17 rows with
GPTQ_KERNELS_WGMMA=1 (the Hopper kernel at every bit width: 64- and 128-row tiles, with and without split-K).
Also checks the results loosely, so a run that computes garbage fails too.
The BCQ ops too: bcq_dequantize (1 to 3 planes, groups inside and on 32-input blocks) and bcq_gemm's
lookup-table kernel (2 and 3 planes, 1, 2 and 4 rows per CTA, fp16/bf16/fp32, with and without split-K) and its
dequantize + cuBLAS path.
"""
import argparse
import os
import sys

# Every tensor its own cudaMalloc: inside the caching allocator's pooled blocks an access past a tensor's end
# would land in memory that memcheck counts as allocated.
os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gptq_kernels import bcq_format, ops, reference  # noqa: E402


def layer(k, n, bits, group_size, device, act_order=False, scale_dtype=torch.float16):
    groups = 1 if group_size == -1 else -(-k // group_size)
    q = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32, device=device)
    zero = torch.randint(1, 1 << bits, (groups, n), dtype=torch.int32, device=device)
    g_idx = torch.arange(k, device=device, dtype=torch.int32) // (k if group_size == -1 else group_size)
    if act_order:
        g_idx = g_idx[torch.randperm(k, device=device)]
    return (ops.pack(q, bits), ops.pack((zero - 1).t().contiguous(), bits).t().contiguous(),
            (torch.rand(groups, n, device=device) * 0.02 + 0.001).to(scale_dtype), g_idx.to(torch.int32))


def check(y, x, w_t, bias=None):
    expected = x.double() @ w_t + (0 if bias is None else bias.double())
    err = ((y.double() - expected).norm() / expected.norm()).item()
    assert err < 2e-2, f"relative error {err}"


def bcq_layer(k, n, planes, group_size, device):
    groups = bcq_format.num_groups(k, group_size)
    qplanes = torch.randint(-2**31, 2**31 - 1, (planes, k // 32, n), dtype=torch.int32, device=device)
    alpha = (torch.rand(groups, planes, n, device=device) * 0.02 + 0.001).half()
    offset = (torch.randn(groups, n, device=device) * 0.01).half()
    return qplanes, alpha, offset


def bcq(device):
    for planes in (2, 3, 1):
        for k, n, group_size in ((576, 96, 128), (4096, 160, 32), (576, 96, 48)):
            w = bcq_layer(k, n, planes, group_size, device)
            w_t = bcq_format.dequantize(*w, None, group_size, dtype=torch.float64)
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                d = ops.bcq_dequantize(w[0], w[1].to(dtype), w[2].to(dtype), group_size)
                assert torch.isfinite(d).all()
            bias = torch.randn(n, device=device, dtype=torch.float16)
            for rows in (1, 2, 3, 5, 8, 9, 40):
                for dtype in ((torch.float16, torch.bfloat16, torch.float32) if rows in (1, 5) else (torch.float16,)):
                    x = torch.randn(rows, k, device=device, dtype=dtype)
                    check(ops.bcq_gemm(x, *w, bias, group_size), x, w_t, bias)
                    check(ops.bcq_gemm(x, *w, None, group_size), x, w_t)
        print(f"sanitize_cuda: bcq {planes} planes done", flush=True)


def quant_linear_layout(w, bits):
    """The op and packed weight QuantLinear keeps on the GPU: 2- and 4-bit weights in fragment order, 3- and 8-bit
    as stored."""
    if ops.has_fragment_order(bits):
        return ops.gemm_fragment_ordered, ops.to_fragment_order(w[0], bits)
    return ops.gemm, w[0]


def hopper_kernel(device):
    """The Hopper kernel (GPTQ_KERNELS_WGMMA=1, which gemm reads at every call; from 17 rows, no g_idx) at every bit
    width: 64-row tiles, 128-row tiles (2 and 4 bits, where they fill the GPU: N = 11264 at 300 rows), split-K
    (K = 2048 at N = 160), groups of 32 and 128."""
    os.environ["GPTQ_KERNELS_WGMMA"] = "1"
    try:
        for bits in (2, 3, 4, 8):
            for k, n, group_size, row_counts in ((576, 96, 128, (17, 100)), (2048, 160, 32, (20, 300)),
                                                 (576, 11264, 128, (300,))):
                w = layer(k, n, bits, group_size, device)
                w_t = reference.dequantize(*w, bits, group_size, dtype=torch.float64)
                gemm, weight = quant_linear_layout(w, bits)
                bias = torch.randn(n, device=device, dtype=torch.float16)
                for rows in row_counts:
                    for dtype in (torch.float16, torch.bfloat16):
                        x = torch.randn(rows, k, device=device, dtype=dtype)
                        check(gemm(x, weight, w[1], w[2], None, bias, bits, group_size), x, w_t, bias)
            print(f"sanitize_cuda: Hopper kernel {bits}-bit done", flush=True)
    finally:
        os.environ.pop("GPTQ_KERNELS_WGMMA", None)


def main(device="cuda", hopper=None, only_hopper=False):
    """device "cpu": the same calls on the CPU ops, which checks this script (and the results' bounds) without a GPU;
    the Hopper kernel's calls run there too (the CPU op ignores GPTQ_KERNELS_WGMMA). hopper: whether to run the
    Hopper kernel (None: on an H100/H200, and on the CPU)."""
    torch.manual_seed(0)
    if hopper is None:
        hopper = device == "cpu" or torch.cuda.get_device_capability() == (9, 0)
    if only_hopper:
        hopper_kernel(device)
        return
    for bits in (2, 3, 4, 8):
        values = torch.randint(0, 1 << bits, (64, 96), dtype=torch.int32, device=device)
        assert torch.equal(ops.unpack(ops.pack(values, bits), bits), values)
        perm = torch.randperm(64, device=device)
        assert torch.equal(ops.unpack(ops.permute_rows(ops.pack(values, bits), perm, bits), bits), values[perm])
        for k, n, group_size, act_order in ((576, 96, 128, False), (576, 96, 64, True), (2048, 160, 32, False)):
            w = layer(k, n, bits, group_size, device, act_order)
            # The float64 weight, once per layer: the reference is slow under the sanitizer.
            w_t = reference.dequantize(*w, bits, group_size, dtype=torch.float64)
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                d = ops.dequantize(w[0], w[1], w[2].to(dtype), w[3], bits, group_size)
                assert torch.isfinite(d).all()
            bias = torch.randn(n, device=device, dtype=torch.float16)
            ql_gemm, ql_weight = quant_linear_layout(w, bits)
            for rows in (1, 2, 3, 8, 9, 20, 40, 100, 300):
                for dtype in ((torch.float16, torch.bfloat16) if rows in (1, 20) else (torch.float16,)):
                    x = torch.randn(rows, k, device=device, dtype=dtype)
                    check(ops.gemm(x, *w, bias, bits, group_size), x, w_t, bias)
                    check(ops.gemm(x, *w, None, bits, group_size), x, w_t)
                    if ops.has_fragment_order(bits):
                        check(ql_gemm(x, ql_weight, *w[1:], bias, bits, group_size), x, w_t, bias)
                    # No g_idx: the tensor-core GEMV up to 16 rows (the Hopper kernel's rows: hopper_kernel).
                    if not act_order and rows <= 16 and bits != 8:
                        check(ql_gemm(x, ql_weight, w[1], w[2], None, bias, bits, group_size), x, w_t, bias)
        print(f"sanitize_cuda: {bits}-bit done", flush=True)
    x = torch.randn(3, 576, device=device)
    w = layer(576, 96, 4, 128, device)
    w_t = reference.dequantize(*w, 4, 128, dtype=torch.float64)
    check(ops.gemm(x, *w, None, 4, 128), x, w_t)  # fp32 activations: dequantize + cuBLAS
    bcq(device)
    if hopper:
        hopper_kernel(device)
    if device == "cuda":
        torch.cuda.synchronize()
    print("sanitize_cuda: all kernels ran")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device", nargs="?", default="cuda", choices=("cuda", "cpu"))
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only-hopper", action="store_true", help="only the Hopper kernel's calls")
    which.add_argument("--no-hopper", action="store_true", help="leave the Hopper kernel out")
    args = parser.parse_args()
    main(args.device, hopper=False if args.no_hopper else None, only_hopper=args.only_hopper)
