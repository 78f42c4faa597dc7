"""QuantLinear as a drop-in nn.Linear: construction, checkpoint loading, act-order, compile, memory."""
import warnings

import pytest
import torch
from torch import nn

import gptq_kernels
from bitstream import expected_weight_t, random_layer
from conftest import TOLERANCE, relative_error
from gptq_kernels import QuantLinear, nn as gk_nn, ops as gk_ops, quantize_rtn


def loaded_layer(k, n, bits, group_size, act_order=False, bias=True, dtype=torch.float16):
    tensors, q, scale, zero, g_idx = random_layer(k, n, bits, group_size, act_order=act_order)
    layer = QuantLinear(k, n, bias=bias, bits=bits, group_size=group_size, dtype=dtype)
    state = dict(tensors)
    if bias:
        state["bias"] = torch.randn(n).to(dtype)
    layer.load_state_dict(state)
    w_t = expected_weight_t(q, scale, zero, g_idx)
    return layer, state, w_t


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("act_order", [False, True])
def test_checkpoint_tensors_load_and_forward(bits, group_size, act_order):
    layer, state, w_t = loaded_layer(576, 64, bits, group_size, act_order=act_order)
    assert (layer.input_perm is not None) == (act_order and group_size != -1)  # one group: nothing to sort
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for shape in ((1, 576), (3, 7, 576), (40, 576)):
            x = torch.randn(shape).to(dtype)
            y = layer(x)
            assert y.dtype == dtype and y.shape == (*shape[:-1], 64)
            expected = x.double() @ w_t + state["bias"].double()
            assert relative_error(y, expected) < TOLERANCE[dtype]
    # The state dict gives back the checkpoint's tensors exactly, act-order included.
    saved = layer.state_dict()
    assert set(saved) == {"qweight", "qzeros", "scales", "g_idx", "bias"}
    for key, value in state.items():
        assert torch.equal(saved[key], value.to(saved[key].dtype)), key
    assert torch.equal(layer.dequantize(torch.float64), w_t.t())


def test_act_order_round_trips_through_a_second_layer():
    layer, state, w_t = loaded_layer(320, 96, 3, 64, act_order=True)
    copy = QuantLinear(320, 96, bits=3, group_size=64)
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(5, 320)
    assert torch.equal(copy(x), layer(x))
    # Internally the rows are sorted by group, so the fused kernel runs without per-element lookups.
    assert bool((copy.g_idx[1:] >= copy.g_idx[:-1]).all())


def test_from_linear_matches_rtn_reference():
    linear = nn.Linear(576, 192, bias=True)
    layer = QuantLinear.from_linear(linear, bits=4, group_size=128, sym=False)
    expected = quantize_rtn(linear.weight.detach(), bits=4, group_size=128, sym=False)
    for key, value in expected.tensors().items():
        assert torch.equal(getattr(layer, key), value), key
    w = expected.dequantize(torch.float64)
    # RTN error is bounded by half a quantization step per weight (plus the rounding of the scale to fp16,
    # which can pull the grid's far end in by up to 15 steps * 2^-11).
    step = expected.scales.double().repeat_interleave(128, dim=0)[:576].t()
    assert ((w - linear.weight.double()).abs() <= step * (0.5 + 15 * 2**-11)).all()
    x = torch.randn(4, 576)
    expected_y = x.double() @ w.t() + linear.bias.detach().half().double()
    assert relative_error(layer(x), expected_y) < 1e-5
    # And close to the float layer itself.
    assert relative_error(layer(x), linear(x).detach()) < 0.1


def test_drop_in_replacement_in_a_model():
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 64))
    x = torch.randn(8, 128)
    reference = model(x).detach()
    for i in (0, 2):
        model[i] = QuantLinear.from_linear(model[i], bits=8, group_size=32)
    assert relative_error(model(x), reference) < 1e-2
    assert "bits=8" in repr(model)


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = nn.Sequential(QuantLinear(96, 64, bits=3, group_size=32, dtype=torch.float16), nn.ReLU(),
                          QuantLinear(64, 32, bits=4, group_size=-1, bias=False))
    for layer in (model[0], model[2]):
        tensors, *_ = random_layer(layer.in_features, layer.out_features, layer.bits, layer.group_size,
                                   act_order=layer is model[0])
        layer.load_state_dict({**tensors, **({"bias": torch.randn(layer.out_features)} if layer.bias is not None else {})})
    compiled = torch.compile(model, fullgraph=True)
    for rows in (1, 5):
        x = torch.randn(rows, 96)
        assert torch.allclose(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_memory_holds_only_packed_weights():
    k, n, bits, group_size = 576, 1536, 3, 128
    layer, *_ = loaded_layer(k, n, bits, group_size, act_order=False, bias=False)
    layer(torch.randn(2, k))
    groups = 5
    expected = k * n * bits // 8 + groups * n * bits // 8 + groups * n * 2 + k * 4
    held = sum(b.numel() * b.element_size() for b in layer.buffers())
    assert held == expected
    assert all(b.numel() < k * n / 4 for b in layer.buffers())  # nothing near a dense copy


def test_to_and_dtype_conversions_keep_working():
    layer, state, w_t = loaded_layer(256, 64, 4, 64)
    x = torch.randn(3, 256)
    y = layer(x)
    layer = layer.to("cpu").float()
    assert layer.scales.dtype == torch.float32 and layer.qweight.dtype == torch.int32
    assert relative_error(layer(x), y) < 1e-3


def test_reference_fallback_matches_compiled_and_says_so_once(monkeypatch):
    layer, state, w_t = loaded_layer(320, 64, 3, 32, act_order=True)
    x = torch.randn(2, 320)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the compiled path warns about nothing
        compiled = layer(x)
    monkeypatch.setattr(gk_nn, "_KERNEL_DEVICE_TYPES", frozenset())
    monkeypatch.setattr(gk_ops, "_REFERENCE_WARNED", set())
    with pytest.warns(UserWarning, match="QuantLinear runs the pure-PyTorch reference on cpu"):
        assert relative_error(layer(x), compiled) < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, not per call
        layer(x)


def test_reference_fallback_traces_under_torch_compile(monkeypatch):
    torch._dynamo.reset()
    layer, _, _ = loaded_layer(128, 64, 4, 32)
    monkeypatch.setattr(gk_nn, "_KERNEL_DEVICE_TYPES", frozenset())
    monkeypatch.setattr(gk_ops, "_REFERENCE_WARNED", set())
    x = torch.randn(3, 128)
    compiled = torch.compile(layer, fullgraph=True)  # the warning must stay out of the traced graph
    with pytest.warns(UserWarning, match="reference"):  # eager says it
        eager = layer(x)
    assert relative_error(compiled(x), eager) < 1e-5
    torch._dynamo.reset()


def test_reference_warning_names_the_missing_cuda_kernels(monkeypatch):
    monkeypatch.setattr(gk_ops, "_REFERENCE_WARNED", set())
    with pytest.warns(UserWarning, match="built without CUDA kernels.*CUDA_HOME"):
        gk_ops.warn_reference_path("QuantLinear", "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gk_ops.warn_reference_path("QuantLinear", "meta")  # shapes only: nothing slow to warn about


def test_extra_repr():
    layer = QuantLinear(576, 1536, bias=False, bits=3, group_size=128)
    assert repr(layer) == ("QuantLinear(in_features=576, out_features=1536, bias=False, bits=3, group_size=128, "
                           "act_order=False)")


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=5), "bits must be one of"),
    (dict(group_size=0), "group_size must be -1"),
    (dict(group_size=-2), "group_size must be -1"),
    (dict(in_features=100), "in_features must be a positive multiple of 32"),
    (dict(out_features=48), "out_features must be a positive multiple of 32"),
    (dict(dtype=torch.int32), "dtype must be one of"),
])
def test_constructor_rejects_bad_arguments(kwargs, match):
    args = dict(in_features=128, out_features=64, bits=4, group_size=32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        QuantLinear(args.pop("in_features"), args.pop("out_features"), **args)


def test_load_state_dict_names_the_bad_tensor():
    layer = QuantLinear(128, 64, bits=4, group_size=32)
    tensors, *_ = random_layer(128, 64, 4, 32)
    with pytest.raises(ValueError, match=r"qweight has shape \(8, 64\), expected \(16, 64\)"):
        layer.load_state_dict({**tensors, "qweight": tensors["qweight"][:8], "bias": torch.zeros(64)})
    with pytest.raises(ValueError, match="qzeros has dtype float32, expected int32"):
        layer.load_state_dict({**tensors, "qzeros": tensors["qzeros"].float(), "bias": torch.zeros(64)})
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict(tensors)  # no bias


def test_forward_rejects_wrong_features():
    layer = QuantLinear(128, 64, bits=4, group_size=32)
    with pytest.raises(ValueError, match="input has 96 features .* in_features=128"):
        layer(torch.randn(2, 96))
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        QuantLinear.from_linear(nn.Conv1d(1, 1, 1))


def test_public_api():
    assert gptq_kernels.QuantLinear is QuantLinear
    assert gptq_kernels.ops.compiled_available()


@pytest.mark.parametrize("act_order", [False, True])
def test_gradients_flow_to_inputs_and_bias(act_order):
    layer, state, w_t = loaded_layer(320, 64, 3, 64, act_order=act_order, dtype=torch.float32)
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


@pytest.mark.parametrize("bits,act_order", [(4, False), (2, True), (3, True)])
def test_fragment_order_is_internal(monkeypatch, bits, act_order):
    # On the CPU the layer keeps the checkpoint order; allowing fragment order here exercises the bookkeeping
    # a CUDA layer does (conversion at load and on moves, state_dict back in checkpoint order).
    plain, state, w_t = loaded_layer(576, 64, bits, 64, act_order=act_order)
    assert not plain._fragment_ordered
    monkeypatch.setattr(QuantLinear, "FRAGMENT_ORDER_DEVICE_TYPES", ("cpu",))
    layer = QuantLinear(576, 64, bits=bits, group_size=64)
    layer.load_state_dict(state)
    assert layer._fragment_ordered == (bits != 3)  # 3-bit weights have no fragment order
    if bits != 3:
        assert not torch.equal(layer.qweight, plain.qweight)
    x = torch.randn(5, 576)
    assert torch.equal(layer(x), plain(x))
    saved = layer.state_dict()
    for key, value in state.items():
        assert torch.equal(saved[key], value.to(saved[key].dtype)), key
    assert torch.equal(layer.dequantize(torch.float64), w_t.t())
    # A second load (a partial one: qweight only) starts from the checkpoint order again.
    layer.load_state_dict({"qweight": state["qweight"]}, strict=False)
    assert torch.equal(layer(x), plain(x))
    # Moving to a device type without fragment order converts back.
    monkeypatch.setattr(QuantLinear, "FRAGMENT_ORDER_DEVICE_TYPES", ())
    layer = layer.to("cpu")
    assert not layer._fragment_ordered and torch.equal(layer.qweight, plain.qweight)
    assert torch.equal(layer(x), plain(x))
