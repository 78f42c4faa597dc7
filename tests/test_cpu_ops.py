"""CPU dequantize and gemm against the float64 reference built from the integers themselves."""
import itertools
import os
import subprocess
import sys

import pytest
import torch

from bitstream import expected_weight_t, random_layer
from conftest import TOLERANCE, relative_error
from gptq_kernels import ops, reference

pytestmark = pytest.mark.skipif(not ops.has_kernel("cpu"), reason="compiled CPU kernels not built")

BITS = [2, 3, 4, 8]
GROUP_SIZES = [32, 64, 128, -1]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Rows of x: up to 128 (AVX2) or 256 (AVX-512) take the fused kernel, with a last row band of 1 row at 33 and
# 129; 257 takes the dequantize + GEMM path everywhere.
ROWS = [1, 3, 26, 33, 129, 200, 257]


def call_gemm(x, tensors, bits, group_size, bias=None, pass_g_idx=True):
    return ops.gemm(x, tensors["qweight"], tensors["qzeros"], tensors["scales"],
                    tensors["g_idx"] if pass_g_idx else None, bias, bits, group_size)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
@pytest.mark.parametrize("act_order", [False, True])
def test_dequantize_is_exact(bits, group_size, act_order):
    tensors, q, scale, zero, g_idx = random_layer(576, 96, bits, group_size, act_order=act_order)
    expected = expected_weight_t(q, scale, zero, g_idx)
    out = ops.dequantize(tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"], bits, group_size)
    assert out.dtype == torch.float16 and out.shape == (576, 96)
    # fp16 scale times a small integer is exact in fp32; the fp16 result is the rounded exact value.
    assert torch.equal(out, expected.to(torch.float16))
    ref = reference.dequantize(tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"], bits,
                               group_size, dtype=torch.float64)
    assert torch.equal(ref, expected)


@pytest.mark.parametrize("bits,group_size,dtype,act_order", list(itertools.product(BITS, GROUP_SIZES, DTYPES,
                                                                                      [False, True])))
def test_gemm_matches_float64_reference(bits, group_size, dtype, act_order):
    k, n = 576, 96  # SmolLM2's hidden size: with group_size 128 the last group is partial (64 channels)
    sym = bool(torch.randint(0, 2, ()).item())
    tensors, q, scale, zero, g_idx = random_layer(k, n, bits, group_size, act_order=act_order, sym=sym)
    w_t = expected_weight_t(q, scale, zero, g_idx)
    if act_order:  # sorted by group, as QuantLinear stores act-order layers: the fused kernel's case
        perm = torch.argsort(g_idx, stable=True)
        sorted_tensors = dict(tensors, qweight=ops.pack(q[perm].contiguous(), bits), g_idx=g_idx[perm].contiguous())
    for rows in ROWS:
        x = torch.randn(rows, k).to(dtype)
        expected = x.double() @ w_t
        y = call_gemm(x, tensors, bits, group_size)
        assert y.dtype == dtype and y.shape == (rows, n)
        assert relative_error(y, expected) < TOLERANCE[dtype], (rows, sym)
        if act_order:
            y_sorted = call_gemm(x[:, perm], sorted_tensors, bits, group_size)
            assert relative_error(y_sorted, expected) < TOLERANCE[dtype], (rows, sym)
        elif group_size != -1:  # g_idx None means k // group_size
            assert torch.equal(call_gemm(x, tensors, bits, group_size, pass_g_idx=False), y)


@pytest.mark.parametrize("bits", BITS)
def test_gemm_long_k_accumulates_accurately(bits):
    tensors, q, scale, zero, g_idx = random_layer(4096, 64, bits, 128)
    for rows in (1, 7, 40):
        x = torch.randn(rows, 4096)
        assert relative_error(call_gemm(x, tensors, bits, 128), x.double() @ expected_weight_t(q, scale, zero, g_idx)) < 1e-5


@pytest.mark.parametrize("group_size", [16, 48, 100, 1000])
def test_gemm_group_sizes_that_split_blocks(group_size):
    tensors, q, scale, zero, g_idx = random_layer(576, 64, 4, group_size)
    for rows in (1, 5):
        x = torch.randn(rows, 576)
        assert relative_error(call_gemm(x, tensors, 4, group_size), x.double() @ expected_weight_t(q, scale, zero, g_idx)) < 1e-5


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gemm_scale_dtypes_and_bias(scale_dtype):
    tensors, q, scale, zero, g_idx = random_layer(256, 64, 3, 64, scale_dtype=scale_dtype)
    bias = torch.randn(64).to(scale_dtype)
    for rows in (2, 40):
        x = torch.randn(rows, 256)
        expected = x.double() @ expected_weight_t(q, scale, zero, g_idx) + bias.double()
        assert relative_error(call_gemm(x, tensors, 3, 64, bias=bias), expected) < 1e-5


@pytest.mark.parametrize("rows", [1, 5, 40])
def test_gemm_3d_and_non_contiguous_inputs(rows):
    tensors, q, scale, zero, g_idx = random_layer(320, 64, 4, 32)
    w_t = expected_weight_t(q, scale, zero, g_idx)
    x3 = torch.randn(2, rows, 320)
    y3 = call_gemm(x3, tensors, 4, 32)
    assert y3.shape == (2, rows, 64)
    assert relative_error(y3, x3.double() @ w_t) < 1e-5
    # Transposed view, and every other column of a wider tensor.
    x_t = torch.randn(320, rows + 1).t()[:rows]
    x_strided = torch.randn(rows, 640)[:, ::2]
    for x in (x_t, x_strided):
        assert not x.is_contiguous()
        assert relative_error(call_gemm(x, tensors, 4, 32), x.double() @ w_t) < 1e-5


def test_gemm_empty_batch():
    tensors, *_ = random_layer(64, 32, 4, 32)
    assert call_gemm(torch.randn(0, 64), tensors, 4, 32).shape == (0, 32)
    assert call_gemm(torch.randn(3, 0, 64), tensors, 4, 32).shape == (3, 0, 32)


def _bad_inputs():
    t, *_ = random_layer(64, 64, 4, 32)
    x = torch.randn(2, 64)
    cases = {
        "bits": (dict(bits=5), "bits must be 2, 3, 4 or 8, got 5"),
        "group_size": (dict(group_size=0), "group_size must be -1 .* or positive, got 0"),
        "qweight dtype": (dict(qweight=t["qweight"].float()), "qweight must be Int, got Float"),
        "qweight 1-D": (dict(qweight=t["qweight"].flatten()), "qweight must be 2-D"),
        "qweight non-contiguous": (dict(qweight=torch.zeros(64, 8, dtype=torch.int32).t()),
                                   "qweight must be contiguous"),
        "qweight rows": (dict(qweight=torch.zeros(7, 64, dtype=torch.int32)), "qweight has 7 rows"),
        "N not a multiple of 32": (dict(qweight=torch.zeros(8, 48, dtype=torch.int32)),
                                   "N = qweight.size\\(1\\) = 48 must be a positive multiple of 32"),
        "qzeros shape": (dict(qzeros=t["qzeros"][:1]), "qzeros must have shape \\[2, 8\\]"),
        "qzeros dtype": (dict(qzeros=t["qzeros"].long()), "qzeros must be Int, got Long"),
        "scales dtype": (dict(scales=t["scales"].double()), "scales must be float16, bfloat16 or float32, got Double"),
        "scales shape": (dict(scales=t["scales"][:, :32].contiguous()), "scales must have shape \\[2, 64\\]"),
        "g_idx dtype": (dict(g_idx=t["g_idx"].long()), "g_idx must be int32, got Long"),
        "g_idx length": (dict(g_idx=t["g_idx"][:32].contiguous()), "g_idx must have shape \\[K=64\\]"),
        "g_idx value": (dict(g_idx=torch.full((64,), 2, dtype=torch.int32)), "g_idx\\[0\\] = 2 is not a group index"),
        "x features": (dict(x=torch.randn(2, 32)), "x has 32 features .* K = 64"),
        "x dtype": (dict(x=torch.ones(2, 64, dtype=torch.int32)), "x must be float16, bfloat16 or float32, got Int"),
        "x float64": (dict(x=torch.randn(2, 64, dtype=torch.float64)), "got Double"),
        "bias shape": (dict(bias=torch.randn(32)), "bias must have shape \\[N=64\\]"),
        "bias dtype": (dict(bias=torch.ones(64, dtype=torch.int64)), "bias must be float16, bfloat16 or float32"),
    }
    for name, (override, match) in cases.items():
        args = dict(x=x, qweight=t["qweight"], qzeros=t["qzeros"], scales=t["scales"], g_idx=t["g_idx"], bias=None,
                    bits=4, group_size=32)
        args.update(override)
        yield pytest.param(args, match, id=name)


@pytest.mark.parametrize("args,match", list(_bad_inputs()))
def test_gemm_rejects_bad_inputs_with_clear_errors(args, match):
    with pytest.raises(RuntimeError, match=r"gptq_kernels\.gemm: .*" + match):
        ops.gemm(**args)


@pytest.mark.parametrize("args,match", list(_bad_inputs()))
def test_gemm_fragment_ordered_rejects_bad_inputs_with_clear_errors(args, match):
    with pytest.raises(RuntimeError, match=r"gptq_kernels\.gemm_fragment_ordered: .*" + match):
        ops.gemm_fragment_ordered(**args)


def test_dequantize_rejects_bad_inputs():
    t, *_ = random_layer(64, 64, 4, 32)
    with pytest.raises(RuntimeError, match="gptq_kernels.dequantize: scales must have shape"):
        ops.dequantize(t["qweight"], t["qzeros"], t["scales"][:1].contiguous(), None, 4, 32)
    with pytest.raises(RuntimeError, match="gptq_kernels.dequantize: g_idx\\[5\\] = -1"):
        g = t["g_idx"].clone()
        g[5] = -1
        ops.dequantize(t["qweight"], t["qzeros"], t["scales"], g, 4, 32)


@pytest.mark.parametrize("bits", [2, 4])
def test_gemm_fragment_ordered_matches_gemm(bits):
    t, q, scale, zero, g_idx = random_layer(576, 96, bits, 64)
    w_t = expected_weight_t(q, scale, zero, g_idx)
    fragment = ops.to_fragment_order(t["qweight"], bits)
    bias = torch.randn(96)
    for rows in (1, 40):
        x = torch.randn(rows, 576, requires_grad=True)
        y = ops.gemm_fragment_ordered(x, fragment, t["qzeros"], t["scales"], None, bias, bits, 64)
        assert torch.equal(y, ops.gemm(x, t["qweight"], t["qzeros"], t["scales"], None, bias, bits, 64))
        y.sum().backward()  # dL/dx[r, k] = sum_n W[n, k]; the backward dequantizes to the scales' fp16
        assert relative_error(x.grad, w_t.sum(1).expand(rows, -1)) < 1e-3
    with pytest.raises(RuntimeError, match="fragment order exists for 2- and 4-bit weights only, got bits = 3"):
        t3, *_ = random_layer(96, 32, 3, 32)
        ops.gemm_fragment_ordered(torch.randn(1, 96), t3["qweight"], t3["qzeros"], t3["scales"], None, None, 3, 32)


def test_opcheck():
    t, *_ = random_layer(96, 64, 3, 32, act_order=True)
    x = torch.randn(3, 96)
    torch.library.opcheck(torch.ops.gptq_kernels.gemm,
                          (x, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], torch.randn(64), 3, 32))
    torch.library.opcheck(torch.ops.gptq_kernels.gemm, (x.half(), t["qweight"], t["qzeros"], t["scales"], None, None, 3, 32))
    torch.library.opcheck(torch.ops.gptq_kernels.dequantize, (t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 3, 32))
    t4, *_ = random_layer(96, 64, 4, 32)
    fragment = ops.to_fragment_order(t4["qweight"], 4)
    torch.library.opcheck(torch.ops.gptq_kernels.gemm_fragment_ordered,
                          (x, fragment, t4["qzeros"], t4["scales"], None, torch.randn(64), 4, 32))
    values = torch.randint(0, 8, (64, 32), dtype=torch.int32)
    torch.library.opcheck(torch.ops.gptq_kernels.pack, (values, 3))
    torch.library.opcheck(torch.ops.gptq_kernels.unpack, (ops.pack(values, 3), 3))


ISA_CHECK = """
import torch, sys
sys.path.insert(0, 'tests')
from bitstream import expected_weight_t, random_layer
from gptq_kernels import ops
torch.manual_seed(0)
worst = {torch.float32: 0.0, torch.bfloat16: 0.0}
for bits in (2, 3, 4, 8):
    for group_size in (32, 128, -1):
        t, q, scale, zero, g_idx = random_layer(576, 96, bits, group_size)  # asymmetric, with zero points of 0
        w_t = expected_weight_t(q, scale, zero, g_idx)
        for rows in (1, 2, 3, 5, 7, 9, 15, 17, 31, 32, 77, 256, 300):  # row bands; both sides of each crossover
            for dtype in worst:
                x = torch.randn(rows, 576).to(dtype)
                y = ops.gemm(x, t["qweight"], t["qzeros"], t["scales"], None, None, bits, group_size)
                ref = x.double() @ w_t
                worst[dtype] = max(worst[dtype], ((y.double() - ref).norm() / ref.norm()).item())
print(worst[torch.float32], worst[torch.bfloat16])
"""

CPU_FLAGS = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
ISA_FLAGS = {"generic": [], "avx2": ["avx2", "fma", "f16c"], "avx512": ["avx2", "fma", "f16c", "avx512f"],
             "avx512bf16": ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"]}


@pytest.mark.parametrize("isa", list(ISA_FLAGS))
def test_every_cpu_instruction_set_variant(isa):
    """Each variant of the fused kernel, forced through GPTQ_KERNELS_CPU_ISA in a fresh process, with fp32 and bf16
    activations (avx512bf16 runs its vdpbf16ps kernel for bf16 at 2, 3 and 4 bits)."""
    if any(f" {flag}" not in CPU_FLAGS for flag in ISA_FLAGS[isa]):
        pytest.skip(f"this CPU cannot run the {isa} kernel")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GPTQ_KERNELS_CPU_ISA=isa, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", ISA_CHECK], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    fp32_error, bf16_error = (float(v) for v in out.stdout.strip().splitlines()[-1].split())
    assert fp32_error < 1e-5
    # Rounding the output to bf16 alone costs about 2e-3; a weight decoded wrongly would cost far more.
    assert bf16_error < 5e-3


def test_unknown_isa_is_rejected():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GPTQ_KERNELS_CPU_ISA="sse9", PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", ISA_CHECK], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "GPTQ_KERNELS_CPU_ISA must be generic, avx2, avx512 or avx512bf16, got 'sse9'" in out.stderr
