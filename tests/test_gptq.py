"""quantize_weight and the gptq_block op against a textbook GPTQ written here, column by column in float64."""
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

from gptq_kernels import QuantLinear, gptq, ops, quantize_rtn, quantize_weight
from gptq_kernels.grid import fit_grid, quantize_to_grid
from conftest import relative_error
from layer_inputs import correlated_inputs, hessian_of, output_error, random_weight

needs_op = pytest.mark.skipif(not ops.has_kernel("cpu", "gptq_block"), reason="compiled extension not built")


# ---------------------------------------------------------------------------------------------- textbook
def textbook_gptq(w, h, bits, group_size, sym, desc_act=False, static_groups=False, damp_percent=0.01, order=None):
    """GPTQ as in the paper's Algorithm 1, one column at a time, float64; returns the dequantized weight.

    order: an explicit column order whose runs of group_size are whole groups (group-aware act-order)."""
    W = w.double().clone()
    H = h.double().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    width = cols if group_size == -1 else group_size
    fixed = None
    if group_size == -1 or static_groups:
        fixed = [fit_grid(W[:, g:g + width], bits, sym) for g in range(0, cols, width)]
    perm = torch.argsort(torch.diag(H), descending=True) if desc_act else torch.arange(cols)
    if order is not None:
        perm = order
    W, H = W[:, perm], H[perm][:, perm]
    H = H + damp_percent * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Wq = torch.zeros_like(W)
    for i in range(cols):
        if fixed is not None:
            scale, zero = fixed[int(perm[i]) // width]
        elif i % group_size == 0:
            scale, zero = fit_grid(W[:, i:i + group_size], bits, sym)
        q = quantize_to_grid(W[:, i:i + 1], scale, zero, bits)
        Wq[:, i] = (scale[:, None].double() * (q.double() - zero[:, None].double()))[:, 0]
        err = (W[:, i] - Wq[:, i]) / U[i, i]
        W[:, i:] -= err[:, None] * U[i:i + 1, i:]
    out = torch.empty_like(Wq)
    out[:, perm] = Wq
    return out


# -------------------------------------------------------------------------------------- quantize_weight
CASES = [  # bits, group_size, sym, desc_act, static_groups, K
    (4, 128, True, False, False, 256),
    (3, 128, False, False, False, 256),
    (2, 128, True, False, False, 256),
    (8, 128, False, False, False, 256),
    (4, -1, True, False, False, 256),
    (3, 32, False, False, False, 256),
    (3, 128, True, True, False, 256),
    (4, 32, False, True, True, 256),
    (3, 128, True, False, True, 256),
    (4, 128, False, True, False, 576),  # the last group of 128 is partial (576 = 4*128 + 64)
    (3, 32, True, False, False, 576),
]


@pytest.mark.parametrize("bits,group_size,sym,desc_act,static_groups,k", CASES)
def test_matches_textbook_gptq(bits, group_size, sym, desc_act, static_groups, k):
    x = correlated_inputs(k)
    h = hessian_of(x)
    w = random_weight(64, k)
    result = quantize_weight(w, h.float(), bits=bits, group_size=group_size, sym=sym, desc_act=desc_act,
                             static_groups=static_groups)
    ours = output_error(w, result.dequantize(torch.float64), h)
    textbook = output_error(w, textbook_gptq(w, h, bits, group_size, sym, desc_act, static_groups), h)
    assert ours == pytest.approx(textbook, rel=0.01)
    assert result.bits == bits and result.group_size == group_size and result.sym == sym
    assert result.damp_percent == 0.01 and result.error > 0


def group_aware_order_by_hand(diag, group_size):
    """Whole groups by decreasing largest diagonal entry, columns inside a group by decreasing diagonal, a
    partial last group last; ties keep the lower index first."""
    cols = diag.numel()
    groups = [list(range(g, min(g + group_size, cols))) for g in range(0, cols, group_size)]
    full = [grp for grp in groups if len(grp) == group_size]
    tail = [grp for grp in groups if len(grp) < group_size]
    full.sort(key=lambda grp: (-max(float(diag[c]) for c in grp), grp[0]))
    order = []
    for grp in full + tail:
        order += sorted(grp, key=lambda c: (-float(diag[c]), c))
    return torch.tensor(order)


@pytest.mark.parametrize("k,group_size", [(576, 128), (256, 32), (96, 32), (64, 128)])
def test_group_aware_order(k, group_size):
    diag = torch.rand(k, generator=torch.Generator().manual_seed(k))
    diag[5] = diag[6]  # a tie
    assert torch.equal(gptq.group_aware_order(diag, group_size), group_aware_order_by_hand(diag, group_size))


@pytest.mark.parametrize("bits,group_size,sym,k", [(4, 128, True, 576), (3, 128, False, 576), (3, 32, True, 256),
                                                    (2, 32, False, 256)])
def test_act_group_aware_matches_textbook_gptq_in_that_order(bits, group_size, sym, k):
    x = correlated_inputs(k, seed=bits)
    h = hessian_of(x)
    w = random_weight(64, k)
    result = quantize_weight(w, h.float(), bits=bits, group_size=group_size, sym=sym, act_group_aware=True)
    assert torch.equal(result.g_idx, torch.arange(k, dtype=torch.int32) // group_size), "g_idx stays k // group_size"
    order = group_aware_order_by_hand(torch.diag(h.float()), group_size)
    ours = output_error(w, result.dequantize(torch.float64), h)
    textbook = output_error(w, textbook_gptq(w, h, bits, group_size, sym, order=order), h)
    assert ours == pytest.approx(textbook, rel=0.01)
    # The layer built from it computes with the grids where the checkpoint expects them.
    layer = result.to_quant_linear(dtype=torch.float32)
    xs = x[:5].float()
    torch.testing.assert_close(layer(xs).double(), xs.double() @ result.dequantize(torch.float64).t(),
                               rtol=1e-5, atol=1e-4)


def test_act_group_aware_beats_the_natural_order_on_outlier_channels():
    k = 576
    x = correlated_inputs(k, seed=7, outliers=8)
    h = hessian_of(x)
    w = random_weight(128, k)
    for bits in (3, 4):
        natural = quantize_weight(w, h.float(), bits=bits, group_size=128)
        aware = quantize_weight(w, h.float(), bits=bits, group_size=128, act_group_aware=True)
        assert output_error(w, aware.dequantize(torch.float64), h) < output_error(w, natural.dequantize(torch.float64), h)


def test_act_group_aware_rejects_what_it_cannot_combine_with():
    h = hessian_of(correlated_inputs(64)).float()
    w = random_weight(32, 64)
    with pytest.raises(ValueError, match="act_group_aware and desc_act are alternative column orders"):
        quantize_weight(w, h, act_group_aware=True, desc_act=True, group_size=32)
    with pytest.raises(ValueError, match=r"act_group_aware needs groups \(group_size > 0\)"):
        quantize_weight(w, h, act_group_aware=True, group_size=-1)
    with pytest.raises(ValueError, match="does not combine with static_groups"):
        quantize_weight(w, h, act_group_aware=True, static_groups=True, group_size=32)
    prepared = gptq.prepare_hessian(h, act_group_aware=True, group_size=32)
    with pytest.raises(ValueError, match="prepared in group-aware order for group_size 32, but group_size is 64"):
        quantize_weight(w, prepared, group_size=64)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [-1, 128])
def test_beats_round_to_nearest(bits, group_size):
    k = 576
    x = correlated_inputs(k, seed=bits)
    h = hessian_of(x)
    w = random_weight(96, k, seed=bits)
    gptq_error = output_error(w, quantize_weight(w, h.float(), bits=bits, group_size=group_size).dequantize(), h)
    rtn_error = output_error(w, quantize_rtn(w, bits=bits, group_size=group_size).dequantize(), h)
    # At 2 bits a symmetric grid has four levels and outlier weights set its step, so error feedback has
    # little room; from 3 bits on GPTQ cuts the output error several times.
    assert gptq_error < (0.95 if bits == 2 else 0.5) * rtn_error


def test_block_size_does_not_change_the_result():
    x = correlated_inputs(256)
    h = hessian_of(x).float()
    w = random_weight(64, 256)
    for kwargs in (dict(group_size=-1), dict(group_size=32, desc_act=True, static_groups=True)):
        a = quantize_weight(w, h, block_size=128, **kwargs).dequantize()
        b = quantize_weight(w, h, block_size=32, **kwargs).dequantize()
        mismatch = (a != b).float().mean().item()
        assert mismatch < 0.01  # only float rounding differs between block sizes


@pytest.mark.parametrize("route", ["onednn", "torch"])
@pytest.mark.parametrize("rows, finished, width", [(96, 128, 128), (200, 448, 64), (32, 37, 5)])
def test_lazy_batch_product_matches_float64(monkeypatch, route, rows, finished, width):
    if route == "onednn" and getattr(torch.ops.mkldnn, "_linear_pointwise", None) is None:
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(gptq, "_onednn_linear",
                        torch.ops.mkldnn._linear_pointwise if route == "onednn" else False)
    g = torch.Generator().manual_seed(rows + finished)
    residual_t = torch.randn(finished, rows, generator=g)
    R = torch.randn(finished + width, finished + width, generator=g).triu()
    block = R[:finished, finished:]  # a strided view, as quantize_weight passes it
    product = gptq.finished_columns_product(residual_t, block)
    expected = residual_t.double().t() @ block.double()
    assert product.shape == (rows, width) and product.dtype == torch.float32
    assert relative_error(product, expected) < 1e-6


@pytest.mark.parametrize("route", ["onednn", "torch"])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_linear_matches_float64(monkeypatch, route, bias):
    if route == "onednn" and getattr(torch.ops.mkldnn, "_linear_pointwise", None) is None:
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(gptq, "_onednn_linear",
                        torch.ops.mkldnn._linear_pointwise if route == "onednn" else False)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 37, 96, generator=g)
    weight = torch.randn(160, 96, generator=g)
    b = torch.randn(160, generator=g) if bias else None
    y = gptq.float32_linear(x, weight, b)
    expected = x.double() @ weight.double().t() + (b.double() if bias else 0)
    assert y.shape == (2, 37, 160) and y.dtype == torch.float32
    assert relative_error(y, expected) < 1e-6
    # Other dtypes always take F.linear.
    assert torch.equal(gptq.float32_linear(x.bfloat16(), weight.bfloat16()),
                       torch.nn.functional.linear(x.bfloat16(), weight.bfloat16()))


def test_both_lazy_batch_routes_give_the_same_quantization(monkeypatch):
    if getattr(torch.ops.mkldnn, "_linear_pointwise", None) is None:
        pytest.skip("this torch has no oneDNN linear")
    x = correlated_inputs(576)
    h = hessian_of(x).float()
    w = random_weight(128, 576)
    results = []
    for route in (torch.ops.mkldnn._linear_pointwise, False):
        monkeypatch.setattr(gptq, "_onednn_linear", route)
        results.append(quantize_weight(w, h, bits=3, group_size=128))
    a, b = results
    assert (a.qweight != b.qweight).float().mean().item() < 0.01  # float rounding only
    assert a.error == pytest.approx(b.error, rel=1e-3)


def test_act_order_g_idx_follows_the_ecosystem():
    k, gs = 256, 32
    x = correlated_inputs(k)
    h = hessian_of(x).float()
    w = random_weight(64, k)
    result = quantize_weight(w, h, bits=4, group_size=gs, desc_act=True)
    perm = torch.argsort(torch.diag(h), descending=True)
    assert torch.equal(result.perm, perm)
    expected = torch.empty(k, dtype=torch.int32)
    expected[perm] = (torch.arange(k) // gs).to(torch.int32)
    assert torch.equal(result.g_idx, expected)
    static = quantize_weight(w, h, bits=4, group_size=gs, desc_act=True, static_groups=True)
    assert torch.equal(static.g_idx, (torch.arange(k) // gs).to(torch.int32))


def test_quant_linear_computes_the_dequantized_weight():
    k = 576
    x = correlated_inputs(k, n=512)
    w = random_weight(64, k)
    bias = torch.randn(64)
    result = quantize_weight(w, hessian_of(x).float(), bits=4, group_size=128, desc_act=True)
    layer = result.to_quant_linear(bias=bias, dtype=torch.float32)
    assert isinstance(layer, QuantLinear)
    xs = x[:7].float()
    expected = xs @ result.dequantize().t() + bias
    torch.testing.assert_close(layer(xs), expected, rtol=1e-4, atol=1e-3)


def test_dead_channels_are_zeroed():
    k = 128
    x = correlated_inputs(k)
    dead = [3, 40, 127]
    x[:, dead] = 0
    w = random_weight(32, k)
    result = quantize_weight(w, hessian_of(x).float(), bits=4, group_size=32, desc_act=True)
    wq = result.dequantize()
    assert torch.isfinite(wq).all()
    assert (wq[:, dead] == 0).all()


def test_singular_hessian_raises_damping_with_a_warning():
    k = 128
    x = correlated_inputs(k, n=16)  # 16 samples: rank 16 Hessian
    h = hessian_of(x).float()
    w = random_weight(32, k)
    with pytest.warns(RuntimeWarning, match=r"layers.0.q: the Hessian is not positive definite with "
                                            r"damp_percent=0; used damp_percent=0.01"):
        result = quantize_weight(w, h, damp_percent=0.0, name="layers.0.q")
    assert result.damp_percent == 0.01
    assert torch.isfinite(result.dequantize()).all()

    indefinite = -torch.eye(k) + 0.5 * h / h.diag().mean()
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        result = quantize_weight(w, indefinite, name="layers.0.q")
    assert result.damp_percent > 1.0 and torch.isfinite(result.dequantize()).all()


def test_no_warning_for_a_healthy_hessian():
    x = correlated_inputs(128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_weight(random_weight(32, 128), hessian_of(x).float())


@pytest.mark.parametrize("where", ["weight", "hessian"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_name_the_layer(where, bad):
    w = random_weight(32, 64)
    h = torch.eye(64)
    if where == "weight":
        w[3, 5] = bad
        match = r"model.layers.3.mlp.up_proj: the weight contains NaN or Inf"
    else:
        h[5, 5] = bad
        match = r"model.layers.3.mlp.up_proj: the Hessian contains NaN or Inf"
    with pytest.raises(ValueError, match=match):
        quantize_weight(w, h, name="model.layers.3.mlp.up_proj")


def test_argument_errors():
    w, h = random_weight(32, 64), torch.eye(64)
    with pytest.raises(ValueError, match=r"down: hessian must have shape \[64, 64\]"):
        quantize_weight(w, torch.eye(32), name="down")
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize_weight(w, h, bits=5)
    with pytest.raises(ValueError, match="group_size must be -1"):
        quantize_weight(w, h, group_size=0)
    with pytest.raises(ValueError, match="in_features must be a positive multiple of 32"):
        quantize_weight(w[:, :48], torch.eye(48))
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        quantize_weight(w, h, block_size=0)
    with pytest.raises(ValueError, match=r"damp_percent must be in \[0, 1\)"):
        quantize_weight(w, h, damp_percent=1.5)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        quantize_weight(w[0], h)


def test_inverse_hessian_factor_is_the_textbook_factor():
    h = hessian_of(correlated_inputs(576)).float()
    u, damp = gptq.inverse_hessian_factor(h, 0.01)
    damped = h.double() + 0.01 * h.diag().double().mean() * torch.eye(576, dtype=torch.float64)
    textbook = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    torch.testing.assert_close(u.double(), textbook, rtol=1e-3, atol=1e-4 * textbook.abs().max().item())
    assert damp == 0.01


# ------------------------------------------------------------------------------------ hessian_factor op
@needs_op
@pytest.mark.parametrize("k", [1, 7, 96, 576])
def test_hessian_factor_op_matches_a_float64_factor(k):
    g = torch.Generator().manual_seed(k)
    a = torch.randn(k, 2 * k + 3, generator=g, dtype=torch.float64)
    h = a @ a.t() / a.shape[1]
    h.triu_().add_(h.triu(1).t())  # exactly symmetric
    damp = 0.05 * float(h.diag().mean())
    r, info = ops.hessian_factor(h.float(), damp)
    assert info == 0 and r.dtype == torch.float32 and r.is_contiguous()
    assert torch.equal(r, r.triu()), "R must be upper triangular"
    damped = h + damp * torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(r.double() @ r.double().t(), damped, rtol=0, atol=1e-5 * float(damped.abs().max()))
    reference = torch.linalg.cholesky(damped.flip((0, 1))).flip((0, 1))
    torch.testing.assert_close(r.double(), reference, rtol=0, atol=1e-5 * float(reference.abs().max()))


@needs_op
def test_hessian_factor_op_agrees_with_the_torch_route(monkeypatch):
    h = hessian_of(correlated_inputs(576)).float()
    with_op, _ = gptq.hessian_factor(h, 0.01)
    monkeypatch.setattr(gptq.ops, "has_kernel", lambda *args: False)
    with_torch, _ = gptq.hessian_factor(h, 0.01)
    torch.testing.assert_close(with_op, with_torch, rtol=0, atol=1e-5 * float(with_torch.abs().max()))


@needs_op
def test_hessian_factor_op_reports_a_matrix_that_is_not_positive_definite():
    h = torch.diag(torch.tensor([1.0, 2.0, -3.0, 4.0]))
    assert ops.hessian_factor(h, 0.0)[1] > 0
    assert ops.hessian_factor(h, 5.0)[1] == 0


@needs_op
def test_hessian_factor_op_rejects_bad_inputs():
    h = torch.eye(8)
    with pytest.raises(RuntimeError, match="hessian_factor: hessian must be a square matrix"):
        ops.hessian_factor(h[:, :4], 0.0)
    with pytest.raises(RuntimeError, match="hessian_factor: hessian must be float32"):
        ops.hessian_factor(h.double(), 0.0)
    with pytest.raises(RuntimeError, match="hessian_factor: damp must be finite and non-negative"):
        ops.hessian_factor(h, -1.0)
    with pytest.raises(RuntimeError, match="hessian_factor: damp must be finite and non-negative"):
        ops.hessian_factor(h, math.nan)


# ---------------------------------------------------------------------------------------- gptq_block op
def block_inputs(rows=67, width=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, width, generator=g)
    a = torch.randn(width, 2 * width, generator=g)
    u, _ = gptq.inverse_hessian_factor(a @ a.t() / width)
    return w, u


@needs_op
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size,offset", [(32, 0), (32, 64), (128, 128)])
def test_op_matches_the_column_loop(bits, sym, group_size, offset):
    w, u = block_inputs()
    got = ops.gptq_block(w, u, bits, sym, group_size, offset, None, None, torch.float16)
    expected = gptq.gptq_block_torch(w, u, bits, sym, group_size, offset)
    assert torch.equal(got[0], expected[0])
    for a, b in zip(got[1:], expected[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_op
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_op_with_precomputed_grids(scale_dtype):
    w, u = block_inputs(width=64)
    scale = torch.rand(67, 64) * 0.5 + 0.1
    zero = torch.randint(1, 8, (67, 64)).float()
    got = ops.gptq_block(w, u, 3, False, -1, 5, scale, zero, scale_dtype)
    expected = gptq.gptq_block_torch(w, u, 3, False, -1, 5, scale, zero)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[3], scale) and torch.equal(got[4], zero)
    torch.testing.assert_close(got[2], expected[2])


@needs_op
def test_op_scale_is_rounded_to_the_storage_dtype():
    w, u = block_inputs(width=32)
    for dtype in (torch.float16, torch.bfloat16):
        scale = ops.gptq_block(w, u, 4, True, 32, 0, None, None, dtype)[3]
        assert torch.equal(scale, scale.to(dtype).float())


@needs_op
def test_op_opcheck():
    w, u = block_inputs(rows=33, width=64)
    torch.library.opcheck(torch.ops.gptq_kernels.gptq_block, (w, u, 4, True, 32, 0, None, None, torch.float16))
    s, z = torch.full((33, 64), 0.1), torch.full((33, 64), 8.0)
    torch.library.opcheck(torch.ops.gptq_kernels.gptq_block, (w, u, 4, True, -1, 0, s, z, torch.float16))


@needs_op
def test_op_error_messages():
    w, u = block_inputs(rows=8, width=64)
    s = torch.ones(8, 64)
    with pytest.raises(RuntimeError, match="gptq_block: bits must be 2, 3, 4 or 8, got 5"):
        ops.gptq_block(w, u, 5, True, 32, 0)
    with pytest.raises(RuntimeError, match=r"hinv must have shape \[64, 64\], got \[32, 32\]"):
        ops.gptq_block(w, u[:32, :32], 4, True, 32, 0)
    with pytest.raises(RuntimeError, match="weight must be float32, got Double"):
        ops.gptq_block(w.double(), u, 4, True, 32, 0)
    with pytest.raises(RuntimeError, match="pass both scale and zero"):
        ops.gptq_block(w, u, 4, True, 32, 0, s, None)
    with pytest.raises(RuntimeError, match="with group_size = -1 the grid spans the whole matrix"):
        ops.gptq_block(w, u, 4, True, -1, 0)
    with pytest.raises(RuntimeError, match="column_offset = 16 must be a multiple of group_size = 32"):
        ops.gptq_block(w, u, 4, True, 32, 16)
    with pytest.raises(RuntimeError, match=r"scale must have shape \[8, 64\]"):
        ops.gptq_block(w, u, 4, True, 32, 0, s[:, :32], s[:, :32])
    with pytest.raises(RuntimeError, match="scale_dtype must be float16, bfloat16 or float32"):
        ops.gptq_block(w, u, 4, True, 32, 0, None, None, torch.float64)


BLOCK_ISA_CHECK = """
import sys, torch
from gptq_kernels import gptq, ops
torch.manual_seed(int(sys.argv[1]))
failures = []
# Fewer rows than one vector and row counts with a remainder; widths that are and are not whole vector tiles.
for rows, width in ((67, 96), (67, 128), (5, 40), (33, 128)):
    w = torch.randn(rows, width)
    a = torch.randn(width, 2 * width)
    u, _ = gptq.inverse_hessian_factor(a @ a.t() / width)
    for bits in (2, 3, 4, 8):
        for sym in (True, False):
            scale = torch.rand(rows, width) * 0.5 + 0.05
            zero = torch.randint(1, 1 << bits, (rows, width)).float()
            # Fitted grids (group 20 ends runs of columns early), then precomputed ones.
            for group_size, offset, s, z in ((32, 0, None, None), (32, 64, None, None), (20, 40, None, None),
                                             (-1, 5, scale, zero)):
                got = ops.gptq_block(w, u, bits, sym, group_size, offset, s, z, torch.float16)
                want = gptq.gptq_block_torch(w, u, bits, sym, group_size, offset, s, z)
                if not all(torch.equal(x, y) for x, y in zip(got, want)):
                    failures.append((rows, width, bits, sym, group_size, offset))
assert not failures, failures
print("ok")
"""


@needs_op
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_op_matches_the_column_loop_exactly_on_every_instruction_set(isa):
    """Each vector width of the op, forced through GPTQ_KERNELS_CPU_ISA in a fresh process, against the
    per-column loop: the same operations in the same order, so every output is bit for bit the same."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if isa == "avx2" and " avx2" not in flags or isa == "avx512" and " avx512f" not in flags:
        pytest.skip(f"this CPU cannot run the {isa} kernel")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GPTQ_KERNELS_CPU_ISA=isa, PYTHONPATH=root)
    seed = str(int(torch.randint(1 << 30, ())))
    out = subprocess.run([sys.executable, "-c", BLOCK_ISA_CHECK, seed], cwd=root, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "ok"


def test_a_prepared_hessian_gives_the_same_result():
    h = hessian_of(correlated_inputs(128)).float()
    w = random_weight(64, 128)
    prepared = gptq.prepare_hessian(h, desc_act=True, damp_percent=0.02)
    a = quantize_weight(w, prepared, bits=3, group_size=32)
    b = quantize_weight(w, h, bits=3, group_size=32, desc_act=True, damp_percent=0.02)
    assert torch.equal(a.qweight, b.qweight) and torch.equal(a.g_idx, b.g_idx) and a.damp_percent == 0.02
    with pytest.raises(ValueError, match=r"q: hessian must be a square matrix, got shape \(4, 5\)"):
        gptq.prepare_hessian(torch.ones(4, 5), name="q")


@pytest.mark.parametrize("n", [1, 100, 257, 600])
def test_invert_lower_triangular(n):
    a = torch.randn(n, n, dtype=torch.float64)
    lower = torch.linalg.cholesky(a @ a.t() + n * torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(gptq.invert_lower_triangular(lower) @ lower, torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("options", [dict(), dict(desc_act=True), dict(act_group_aware=True)])
def test_inputs_are_left_untouched(options):
    x = correlated_inputs(128)
    x[:, 3] = 0.0  # a dead channel: its weights are zeroed and its diagonal patched, in copies
    h = hessian_of(x).float()
    w = random_weight(32, 128)
    h_before, w_before = h.clone(), w.clone()
    quantize_weight(w, h, bits=4, group_size=32, **options)
    assert torch.equal(h, h_before) and torch.equal(w, w_before)


@pytest.mark.parametrize("route", ["op", "reference"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_quantized_weight_dequantizes_exactly_in_every_dtype(monkeypatch, route, bits, dtype):
    # scale * (q - zero) of fp16 scales and small integers is exact in float64: every dtype's result must be that
    # value rounded once (float32 is what the driver's stand-ins compute with, on any route).
    from gptq_kernels.quantized import QuantizedWeight

    if route == "reference":
        monkeypatch.setattr(ops, "has_kernel", lambda device_type, op: False)
    rows, columns, group_size = 96, 576, 128  # a partial last group
    groups = math.ceil(columns / group_size)
    q = torch.randint(0, 1 << bits, (rows, columns), dtype=torch.int32)
    zero = torch.randint(1, 1 << bits, (rows, groups)).float()
    scale = torch.rand(rows, groups) * 0.1 + 1e-3
    g_idx = torch.randint(0, groups, (columns,), dtype=torch.int32)  # act-order-like
    packed = QuantizedWeight.from_integers(q, scale, zero, g_idx, bits, group_size, sym=False,
                                           scale_dtype=torch.float16)
    s = packed.scales.double().t()[:, g_idx.long()]
    expected = s * (q.double() - zero.double()[:, g_idx.long()])
    assert torch.equal(packed.dequantize(dtype), expected.to(dtype))
