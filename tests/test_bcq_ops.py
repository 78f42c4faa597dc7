"""CPU bcq_dequantize / bcq_gemm and BCQLinear against a float64 weight built from the signs themselves."""
import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import TOLERANCE, relative_error
from gptq_kernels import bcq_format, bcq_linear, ops
from gptq_kernels.bcq_linear import BCQLinear

pytestmark = pytest.mark.skipif(not ops.has_kernel("cpu", "bcq_gemm"), reason="compiled CPU kernels not built")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# 1..32 rows take the lookup-table kernel (2 and 3 planes); 33 and 300 dequantize + GEMM.
ROWS = [1, 3, 17, 33, 300]


def random_bcq(k, n, planes, group_size, dtype=torch.float16, act_order=False, device="cpu"):
    """Random signs, alpha, offset and g_idx of a layer. Returns (tensors, expected W^T [K, N] in float64).

    The expected weight comes from the signs and the (rounded) alpha and offset directly, not from the packed
    planes, so a packing or unpacking bug cannot hide in both."""
    groups = bcq_format.num_groups(k, group_size)
    signs = torch.randint(0, 2, (planes, k, n)) * 2 - 1
    alpha = (torch.rand(groups, planes, n, dtype=torch.float64) * 0.02 + 0.001).to(dtype)
    offset = (torch.randn(groups, n, dtype=torch.float64) * 0.01).to(dtype)
    g_idx = torch.arange(k, dtype=torch.int32) // (k if group_size == -1 else group_size)
    if act_order:
        g_idx = g_idx[torch.randperm(k)]
    g = g_idx.long()
    w_t = (alpha.double()[g].permute(1, 0, 2) * signs.double()).sum(0) + offset.double()[g]
    tensors = {"qplanes": bcq_format.pack_planes(signs), "alpha": alpha, "offset": offset, "g_idx": g_idx}
    return {name: t.to(device) for name, t in tensors.items()}, w_t.to(device)


def gemm(x, t, group_size, bias=None):
    return ops.bcq_gemm(x, t["qplanes"], t["alpha"], t["offset"], bias, group_size)


# ------------------------------------------------------------------------------------------- dequantize
def test_bit_j_of_word_w_is_input_32w_plus_j():
    qplanes = torch.zeros(2, 3, 32, dtype=torch.int32)
    qplanes[0, 1, 7] = 1 << 5  # plane 0, input 37, output 7: +1; every other sign -1
    qplanes[1, 2, 0] = -2**31  # plane 1, bit 31 of word 2 (input 95), output 0
    alpha = torch.tensor([[1.0, 10.0]]).repeat(32, 1).t().reshape(1, 2, 32).contiguous()
    offset = torch.zeros(1, 32)
    w_t = ops.bcq_dequantize(qplanes, alpha, offset, -1)
    expected = torch.full((96, 32), -11.0)
    expected[37, 7] = 1 - 10
    expected[95, 0] = -1 + 10
    assert torch.equal(w_t, expected)


@pytest.mark.parametrize("planes", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 128, -1, 48])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantize_matches_float64_reference(planes, group_size, dtype):
    t, w_t = random_bcq(576, 96, planes, group_size, dtype=dtype)
    out = ops.bcq_dequantize(t["qplanes"], t["alpha"], t["offset"], group_size)
    assert out.dtype == dtype and out.shape == (576, 96)
    ref = bcq_format.dequantize(t["qplanes"], t["alpha"], t["offset"], None, group_size, dtype=torch.float64)
    assert torch.equal(ref, w_t)
    assert_dequantized_close(out, w_t, t)


def assert_dequantized_close(out, w_t, t):
    """Summed in fp32 and rounded once to the output dtype: within an ulp of the exact value, plus the fp32
    rounding of the partial sums (relative to the size of the terms, which can cancel)."""
    magnitude = dequantize_abs_terms(t["alpha"], t["offset"], t["g_idx"])
    bound = w_t.abs() * torch.finfo(out.dtype).eps + magnitude * 8 * torch.finfo(torch.float32).eps
    assert ((out.double() - w_t).abs() <= bound).all()


def dequantize_abs_terms(alpha, offset, g_idx):
    g = g_idx.long()
    return alpha.double().abs().sum(1)[g] + offset.double().abs()[g]


# ------------------------------------------------------------------------------------------------- gemm
@pytest.mark.parametrize("planes,group_size,dtype", list(itertools.product([1, 2, 3, 4], [32, 128, -1], DTYPES)))
def test_gemm_matches_float64_reference(planes, group_size, dtype):
    k, n = 576, 96  # SmolLM2's hidden size: with group_size 128 the last group is partial (64 inputs)
    t, w_t = random_bcq(k, n, planes, group_size)
    for rows in ROWS:
        x = torch.randn(rows, k).to(dtype)
        y = gemm(x, t, group_size)
        assert y.dtype == dtype and y.shape == (rows, n)
        assert relative_error(y, x.double() @ w_t) < TOLERANCE[dtype], rows


@pytest.mark.parametrize("planes", [2, 3])
@pytest.mark.parametrize("group_size", [32, 64, 128, 1024, -1])
def test_gemm_long_k_accumulates_accurately(planes, group_size):
    # The CPU kernel sweeps K in runs of up to 4 blocks: several small groups per run, large groups split.
    t, w_t = random_bcq(4096, 64, planes, group_size)
    for rows in (1, 7, 32, 40):
        x = torch.randn(rows, 4096)
        assert relative_error(gemm(x, t, group_size), x.double() @ w_t) < 1e-5


@pytest.mark.parametrize("group_size", [16, 48, 100, 1000])
def test_gemm_group_sizes_that_split_blocks(group_size):
    # 16, 48, 100: groups end inside 32-input words (dequantize + GEMM); 1000 >= K: one group (lookup tables).
    t, w_t = random_bcq(576, 64, 3, group_size)
    for rows in (1, 5, 40):
        x = torch.randn(rows, 576)
        assert relative_error(gemm(x, t, group_size), x.double() @ w_t) < 1e-5


@pytest.mark.parametrize("weight_dtype", DTYPES)
def test_gemm_alpha_offset_and_bias_dtypes(weight_dtype):
    t, w_t = random_bcq(256, 64, 2, 64, dtype=weight_dtype)
    for offset_dtype, bias_dtype in ((torch.float32, torch.float16), (torch.bfloat16, torch.float32)):
        offset = t["offset"].to(offset_dtype)
        w = w_t + (offset.double() - t["offset"].double()).repeat_interleave(64, dim=0)
        bias = torch.randn(64).to(bias_dtype)
        for rows in (2, 40):
            x = torch.randn(rows, 256)
            y = ops.bcq_gemm(x, t["qplanes"], t["alpha"], offset, bias, 64)
            assert relative_error(y, x.double() @ w + bias.double()) < 1e-5


@pytest.mark.parametrize("rows", [1, 5, 40])
def test_gemm_3d_and_non_contiguous_inputs(rows):
    t, w_t = random_bcq(320, 64, 3, 32)
    x3 = torch.randn(2, rows, 320)
    y3 = gemm(x3, t, 32)
    assert y3.shape == (2, rows, 64)
    assert relative_error(y3, x3.double() @ w_t) < 1e-5
    x_t = torch.randn(320, rows + 1).t()[:rows]  # transposed view
    x_strided = torch.randn(rows, 640)[:, ::2]  # every other column of a wider tensor
    x_half = torch.randn(rows, 640, dtype=torch.float16)[:, 1::2]
    for x in (x_t, x_strided, x_half):
        assert not x.is_contiguous()
        assert relative_error(gemm(x, t, 32), x.double() @ w_t) < TOLERANCE[x.dtype]


def test_gemm_empty_batch():
    t, _ = random_bcq(64, 32, 2, 32)
    assert gemm(torch.randn(0, 64), t, 32).shape == (0, 32)
    assert gemm(torch.randn(3, 0, 64), t, 32).shape == (3, 0, 32)


def test_gemm_rows_are_independent():
    # Row r of a batch equals the same row alone: the lookup tables of one row never leak into another.
    t, _ = random_bcq(576, 96, 3, 128)
    x = torch.randn(9, 576)
    batch = gemm(x, t, 128)
    for r in range(9):
        assert torch.allclose(batch[r], gemm(x[r:r + 1], t, 128)[0], rtol=1e-5, atol=1e-6)


def _bad_inputs():
    t, _ = random_bcq(64, 64, 2, 32)
    x = torch.randn(2, 64)
    cases = {
        "group_size": (dict(group_size=0), "group_size must be -1 .* or positive, got 0"),
        "qplanes dtype": (dict(qplanes=t["qplanes"].long()), "qplanes must be int32, got Long"),
        "qplanes 2-D": (dict(qplanes=t["qplanes"][0]), "qplanes must be 3-D \\[planes, K/32, N\\]"),
        "qplanes non-contiguous": (dict(qplanes=torch.zeros(2, 64, 2, dtype=torch.int32).transpose(1, 2)),
                                   "qplanes must be contiguous"),
        "too many planes": (dict(qplanes=torch.zeros(9, 2, 64, dtype=torch.int32)),
                            "qplanes has 9 planes \\(size\\(0\\)\\), expected 1 to 8"),
        "N not a multiple of 32": (dict(qplanes=torch.zeros(2, 2, 48, dtype=torch.int32)),
                                   "N = qplanes.size\\(2\\) = 48 must be a positive multiple of 32"),
        "alpha shape": (dict(alpha=t["alpha"][:, :1].contiguous()), "alpha must have shape \\[2, 2, 64\\]"),
        "alpha dtype": (dict(alpha=t["alpha"].double()), "alpha must be float16, bfloat16 or float32, got Double"),
        "alpha non-contiguous": (dict(alpha=t["alpha"].transpose(0, 1).contiguous().transpose(0, 1)),
                                 "alpha must be contiguous"),
        "offset shape": (dict(offset=t["offset"][:1]), "offset must have shape \\[2, 64\\]"),
        "offset dtype": (dict(offset=t["offset"].to(torch.int32)), "offset must be float16, bfloat16 or float32"),
        "x features": (dict(x=torch.randn(2, 32)), "x has 32 features .* K = 64"),
        "x dtype": (dict(x=torch.ones(2, 64, dtype=torch.int32)), "x must be float16, bfloat16 or float32, got Int"),
        "x float64": (dict(x=torch.randn(2, 64, dtype=torch.float64)), "got Double"),
        "bias shape": (dict(bias=torch.randn(32)), "bias must have shape \\[N=64\\]"),
        "bias dtype": (dict(bias=torch.ones(64, dtype=torch.int64)), "bias must be float16, bfloat16 or float32"),
    }
    for name, (override, match) in cases.items():
        args = dict(x=x, qplanes=t["qplanes"], alpha=t["alpha"], offset=t["offset"], bias=None, group_size=32)
        args.update(override)
        yield pytest.param(args, match, id=name)


@pytest.mark.parametrize("args,match", list(_bad_inputs()))
def test_gemm_rejects_bad_inputs_with_clear_errors(args, match):
    with pytest.raises(RuntimeError, match=r"gptq_kernels\.bcq_gemm: .*" + match):
        ops.bcq_gemm(**args)


def test_dequantize_rejects_bad_inputs():
    t, _ = random_bcq(64, 64, 3, 32)
    with pytest.raises(RuntimeError, match=r"gptq_kernels\.bcq_dequantize: offset must have shape \[2, 64\]"):
        ops.bcq_dequantize(t["qplanes"], t["alpha"], t["offset"][:1].contiguous(), 32)
    with pytest.raises(RuntimeError, match=r"gptq_kernels\.bcq_dequantize: alpha must have shape \[1, 3, 64\]"):
        ops.bcq_dequantize(t["qplanes"], t["alpha"], t["offset"], -1)


def test_opcheck():
    t, _ = random_bcq(96, 64, 3, 32)
    x = torch.randn(3, 96)
    torch.library.opcheck(torch.ops.gptq_kernels.bcq_gemm,
                          (x, t["qplanes"], t["alpha"], t["offset"], torch.randn(64), 32))
    one, _ = random_bcq(96, 64, 2, -1, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.gptq_kernels.bcq_gemm, (x.half(), one["qplanes"], one["alpha"], one["offset"], None, -1))
    torch.library.opcheck(torch.ops.gptq_kernels.bcq_gemm,
                          (torch.randn(40, 96), t["qplanes"], t["alpha"], t["offset"], None, 32))
    torch.library.opcheck(torch.ops.gptq_kernels.bcq_dequantize, (t["qplanes"], t["alpha"], t["offset"], 32))


ISA_CHECK = """
import torch, sys
sys.path.insert(0, 'tests')
from test_bcq_ops import random_bcq
from gptq_kernels import ops
torch.manual_seed(0)
worst = 0.0
for planes in (2, 3):
    for group_size in (32, 128, -1):
        t, w_t = random_bcq(576, 96, planes, group_size, dtype=torch.bfloat16)
        for rows in (1, 2, 3, 4, 5, 9, 32, 40):
            x = torch.randn(rows, 576)
            y = ops.bcq_gemm(x, t["qplanes"], t["alpha"], t["offset"], None, group_size)
            ref = x.double() @ w_t
            worst = max(worst, ((y.double() - ref).norm() / ref.norm()).item())
        d = ops.bcq_dequantize(t["qplanes"], t["alpha"].float(), t["offset"].float(), group_size)
        worst = max(worst, ((d.double() - w_t).norm() / w_t.norm()).item())
print(worst)
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_cpu_instruction_set_variant(isa):
    """Each vector width of the lookup-table kernel, forced through GPTQ_KERNELS_CPU_ISA in a fresh process."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if isa == "avx2" and " avx2" not in flags or isa == "avx512" and " avx512f" not in flags:
        pytest.skip(f"this CPU cannot run the {isa} kernel")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GPTQ_KERNELS_CPU_ISA=isa, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", ISA_CHECK], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-5


# ------------------------------------------------------------------------------------------- BCQLinear
def loaded_bcq_linear(k, n, planes, group_size, act_order=False, bias=True, dtype=torch.float16):
    t, w_t = random_bcq(k, n, planes, group_size, dtype=dtype, act_order=act_order)
    state = dict(t)
    if bias:
        state["bias"] = torch.randn(n).to(dtype)
    layer = BCQLinear(k, n, bias=bias, planes=planes, group_size=group_size, dtype=dtype)
    layer.load_state_dict(state)
    return layer, state, w_t


@pytest.mark.parametrize("planes", [2, 3, 1])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("act_order", [False, True])
def test_bcq_linear_matches_reference_and_round_trips(planes, group_size, act_order):
    layer, state, w_t = loaded_bcq_linear(576, 64, planes, group_size, act_order=act_order)
    assert (layer.input_perm is not None) == (act_order and group_size != -1)  # one group: nothing to sort
    for dtype in DTYPES:
        for shape in ((1, 576), (3, 7, 576), (40, 576)):
            x = torch.randn(shape).to(dtype)
            y = layer(x)
            assert y.dtype == dtype and y.shape == (*shape[:-1], 64)
            expected = x.double() @ w_t + state["bias"].double()
            assert relative_error(y, expected) < TOLERANCE[dtype]
            reference = bcq_format.gemm(x, state["qplanes"], state["alpha"], state["offset"], state["g_idx"],
                                        state["bias"], group_size, compute_dtype=torch.float64)
            assert relative_error(y, reference) < TOLERANCE[dtype]
    # The state dict gives back the checkpoint's tensors exactly, act-order included, and loads into a new layer.
    saved = layer.state_dict()
    assert set(saved) == {"qplanes", "alpha", "offset", "g_idx", "bias"}
    for key, value in state.items():
        assert torch.equal(saved[key], value), key
    assert torch.equal(layer.dequantize(torch.float64), w_t.t())
    copy = BCQLinear(576, 64, planes=planes, group_size=group_size)
    copy.load_state_dict(saved)
    x = torch.randn(5, 576)
    assert torch.equal(copy(x), layer(x))
    if act_order and group_size != -1:  # stored sorted by group, so the kernel needs no g_idx
        assert bool((copy.g_idx[1:] >= copy.g_idx[:-1]).all())


def test_bcq_linear_partial_reload_keeps_act_order_consistent():
    layer, state, w_t = loaded_bcq_linear(320, 64, 3, 64, act_order=True)
    t2, w_t2 = random_bcq(320, 64, 3, 64, act_order=True)
    layer.load_state_dict({"qplanes": t2["qplanes"], "g_idx": t2["g_idx"]}, strict=False)
    x = torch.randn(4, 320)
    expected = bcq_format.gemm(x.double(), t2["qplanes"], state["alpha"], state["offset"], t2["g_idx"],
                               state["bias"], 64)
    assert relative_error(layer(x), expected) < 1e-5
    layer.load_state_dict({"alpha": t2["alpha"]}, strict=False)  # qplanes and g_idx stay as they were
    expected = bcq_format.gemm(x.double(), t2["qplanes"], t2["alpha"], state["offset"], t2["g_idx"], state["bias"], 64)
    assert relative_error(layer(x), expected) < 1e-5


def test_bcq_linear_unequal_sorted_groups_run_the_reference():
    # A sorted g_idx that is not k // group_size (groups of different sizes) cannot be passed to the kernel.
    layer, state, _ = loaded_bcq_linear(128, 32, 2, 32)
    g_idx = torch.tensor([0] * 20 + [1] * 44 + [2] * 32 + [3] * 32, dtype=torch.int32)
    layer.load_state_dict({"g_idx": g_idx}, strict=False)
    assert layer.input_perm is None and layer._g_idx_needed
    x = torch.randn(3, 128)
    expected = bcq_format.gemm(x.double(), state["qplanes"], state["alpha"], state["offset"], g_idx, state["bias"], 32)
    assert relative_error(layer(x), expected) < 1e-5


def test_bcq_linear_reference_fallback_matches_compiled(monkeypatch):
    layer, _, _ = loaded_bcq_linear(320, 64, 3, 32, act_order=True)
    x = torch.randn(2, 320)
    compiled = layer(x)
    monkeypatch.setattr(bcq_linear, "_KERNEL_DEVICE_TYPES", frozenset())
    monkeypatch.setattr(ops, "_REFERENCE_WARNED", set())
    with pytest.warns(UserWarning, match="BCQLinear runs the pure-PyTorch reference on cpu"):
        assert relative_error(layer(x), compiled) < 1e-5


def test_bcq_linear_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    first, _, _ = loaded_bcq_linear(96, 64, 3, 32, act_order=True)
    second, _, _ = loaded_bcq_linear(64, 32, 2, -1, bias=False, dtype=torch.float32)
    model = nn.Sequential(first, nn.ReLU(), second)
    compiled = torch.compile(model, fullgraph=True)
    for rows in (1, 5, 40):
        x = torch.randn(rows, 96)
        assert torch.allclose(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_bcq_linear_gradients_flow_to_inputs_and_bias():
    layer, state, w_t = loaded_bcq_linear(320, 64, 2, 64, act_order=True, dtype=torch.float32)
    layer.bias.requires_grad_(True)
    x = torch.randn(2, 5, 320, requires_grad=True)
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    x64 = x.detach().double().requires_grad_(True)
    b64 = state["bias"].double().requires_grad_(True)
    (x64 @ w_t + b64).backward(grad_out.double())
    assert relative_error(x.grad, x64.grad) < 1e-5
    assert relative_error(layer.bias.grad, b64.grad) < 1e-5


def test_permute_input_channels_moves_sign_bits():
    signs = torch.randint(0, 2, (3, 96, 64)) * 2 - 1
    perm = torch.randperm(96)
    permuted = bcq_linear.permute_input_channels(bcq_format.pack_planes(signs), perm)
    assert torch.equal(permuted, bcq_format.pack_planes(signs[:, perm]))
