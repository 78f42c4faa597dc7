"""CUDA bcq_dequantize / bcq_gemm and BCQLinear against a float64 weight built from the signs themselves.

Every test is marked `cuda` and skipped without a GPU (run them with `pytest -m cuda`). Matmul results must be
no worse than twice the error of a same-dtype PyTorch F.linear against the same float64 reference, plus a small
relative floor (the criterion of tests/test_cuda.py).
"""
import pytest
import torch

from test_bcq_ops import _bad_inputs, assert_dequantized_close, random_bcq
from test_cuda import assert_close_to_reference, poison_allocator
from gptq_kernels import bcq_format, ops
from gptq_kernels.bcq_linear import BCQLinear

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not ops.has_kernel("cuda", "bcq_gemm"), reason="the extension was built without CUDA kernels"),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# 1, 2: one row tile of that size; 3, 4: a tile of 4; 5, 8: two tiles of 4 (lookup-table kernel);
# 9, 33, 300: dequantize + cuBLAS.
ROWS = [1, 2, 3, 4, 5, 8, 9, 33, 300]


def gemm(x, t, group_size, bias=None):
    return ops.bcq_gemm(x, t["qplanes"], t["alpha"], t["offset"], bias, group_size)


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
@pytest.mark.parametrize("group_size", [32, 128, -1, 48])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantize_matches_float64_reference(planes, group_size, dtype):
    t, w_t = random_bcq(576, 96, planes, group_size, dtype=dtype, device="cuda")
    poison_allocator()
    out = ops.bcq_dequantize(t["qplanes"], t["alpha"], t["offset"], group_size)
    assert out.dtype == dtype and out.shape == (576, 96) and out.is_cuda
    assert torch.isfinite(out).all()
    # Summed in fp32 in the CPU op's order and rounded once: the same values as the CPU op.
    cpu = ops.bcq_dequantize(t["qplanes"].cpu(), t["alpha"].cpu(), t["offset"].cpu(), group_size)
    assert torch.equal(out.cpu(), cpu)
    assert_dequantized_close(out, w_t, t)


@pytest.mark.parametrize("planes", [2, 3, 1])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_matches_float64_reference(planes, group_size, dtype):
    k, n = 576, 96  # with group_size 128 the last group is partial (64 inputs); N is not a multiple of 128
    t, w_t = random_bcq(k, n, planes, group_size, device="cuda")
    for rows in ROWS:
        x = torch.randn(rows, k, device="cuda").to(dtype)
        poison_allocator()  # an output element the kernel forgets to write stays NaN
        y = gemm(x, t, group_size)
        assert y.dtype == dtype and y.shape == (rows, n)
        assert_close_to_reference(y, x, w_t)


@pytest.mark.parametrize("planes", [2, 3])
@pytest.mark.parametrize("k,n", [(4096, 256), (4096, 11008), (11008, 4096), (16384, 4096), (32, 32)])
def test_gemm_shapes_and_split_k(planes, k, n):
    # Large K is split over CTAs (and its last stage is partial for 11008); N = 11008 leaves a partial column tile.
    group_size = 128 if k >= 128 else -1
    t, w_t = random_bcq(k, n, planes, group_size, device="cuda")
    for rows in (1, 2, 4, 7, 20):
        x = torch.randn(rows, k, device="cuda", dtype=torch.float16)
        poison_allocator()
        assert_close_to_reference(gemm(x, t, group_size), x, w_t)


@pytest.mark.parametrize("group_size", [16, 48, 100, 1000])
@pytest.mark.parametrize("rows", [1, 4, 40])
def test_gemm_group_sizes_that_split_blocks(group_size, rows):
    t, w_t = random_bcq(576, 64, 3, group_size, device="cuda")
    x = torch.randn(rows, 576, device="cuda", dtype=torch.float16)
    assert_close_to_reference(gemm(x, t, group_size), x, w_t)


def test_gemm_bias_and_weight_dtypes():
    for weight_dtype in DTYPES:
        t, w_t = random_bcq(256, 64, 3, 64, dtype=weight_dtype, device="cuda")
        for bias_dtype in DTYPES:
            bias = torch.randn(64, device="cuda").to(bias_dtype)
            for rows in (1, 3, 40):
                x = torch.randn(rows, 256, device="cuda", dtype=torch.float16)
                assert_close_to_reference(gemm(x, t, 64, bias), x, w_t, bias)


@pytest.mark.parametrize("rows", [1, 5, 40])
def test_gemm_3d_and_non_contiguous_inputs(rows):
    t, w_t = random_bcq(320, 64, 3, 32, device="cuda")
    x3 = torch.randn(2, rows, 320, device="cuda", dtype=torch.float16)
    y3 = gemm(x3, t, 32)
    assert y3.shape == (2, rows, 64)
    assert_close_to_reference(y3.reshape(-1, 64), x3.reshape(-1, 320), w_t)
    x_t = torch.randn(320, rows + 1, device="cuda", dtype=torch.float16).t()[:rows]
    x_strided = torch.randn(rows, 640, device="cuda", dtype=torch.float16)[:, ::2]
    x_misaligned = torch.randn(rows, 330, device="cuda", dtype=torch.float16)[:, 3:323]
    for x in (x_t, x_strided, x_misaligned):
        assert not x.is_contiguous()
        assert_close_to_reference(gemm(x, t, 32), x, w_t)


def test_gemm_empty_batch():
    t, _ = random_bcq(64, 32, 2, 32, device="cuda")
    assert gemm(torch.randn(0, 64, device="cuda", dtype=torch.float16), t, 32).shape == (0, 32)


@pytest.mark.parametrize("rows", [1, 3])
def test_gemm_is_deterministic(rows):
    t, _ = random_bcq(8192, 512, 3, 128, device="cuda")  # split over many CTAs
    x = torch.randn(rows, 8192, device="cuda", dtype=torch.bfloat16)
    y = gemm(x, t, 128)
    for _ in range(3):
        assert torch.equal(gemm(x, t, 128), y)


def test_gemm_runs_on_the_current_stream():
    t, w_t = random_bcq(576, 96, 3, 128, device="cuda")
    x = torch.randn(2, 576, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = gemm(x, t, 128)
    torch.cuda.current_stream().wait_stream(stream)
    assert_close_to_reference(y, x, w_t)


@pytest.mark.parametrize("args,match", list(_bad_inputs()) if torch.cuda.is_available() else [])
def test_gemm_rejects_bad_inputs_with_clear_errors(args, match):
    args = {name: v.cuda() if isinstance(v, torch.Tensor) else v for name, v in args.items()}
    with pytest.raises(RuntimeError, match=r"gptq_kernels\.bcq_gemm: .*" + match):
        ops.bcq_gemm(**args)


def test_gemm_rejects_inputs_on_another_device():
    t, _ = random_bcq(64, 64, 2, 32, device="cuda")
    with pytest.raises(RuntimeError, match="gptq_kernels.bcq_gemm: x is on cpu but qplanes is on cuda"):
        gemm(torch.randn(2, 64), t, 32)
    with pytest.raises(RuntimeError, match="gptq_kernels.bcq_gemm: alpha is on cpu but qplanes is on cuda"):
        ops.bcq_gemm(torch.randn(2, 64, device="cuda"), t["qplanes"], t["alpha"].cpu(), t["offset"], None, 32)


def test_opcheck():
    t, _ = random_bcq(96, 64, 3, 32, device="cuda")
    x = torch.randn(3, 96, device="cuda", dtype=torch.float16)
    torch.library.opcheck(torch.ops.gptq_kernels.bcq_gemm,
                          (x, t["qplanes"], t["alpha"], t["offset"], torch.randn(64, device="cuda"), 32))
    one, _ = random_bcq(96, 64, 2, -1, dtype=torch.bfloat16, device="cuda")
    torch.library.opcheck(torch.ops.gptq_kernels.bcq_gemm, (x.float(), one["qplanes"], one["alpha"], one["offset"], None, -1))
    torch.library.opcheck(torch.ops.gptq_kernels.bcq_gemm,
                          (torch.randn(40, 96, device="cuda", dtype=torch.float16), t["qplanes"], t["alpha"],
                           t["offset"], None, 32))
    torch.library.opcheck(torch.ops.gptq_kernels.bcq_dequantize, (t["qplanes"], t["alpha"], t["offset"], 32))


# ------------------------------------------------------------------------------------------- BCQLinear
@pytest.mark.parametrize("act_order", [False, True])
def test_bcq_linear_on_cuda_matches_reference_and_round_trips(act_order):
    t, w_t = random_bcq(576, 96, 3, 64, act_order=act_order)
    state = dict(t, bias=torch.randn(96).half())
    layer = BCQLinear(576, 96, planes=3, group_size=64, device="cuda")
    layer.load_state_dict({name: v.cuda() for name, v in state.items()})
    for rows in (1, 4, 40):
        x = torch.randn(rows, 576, device="cuda", dtype=torch.float16)
        assert_close_to_reference(layer(x), x, w_t.cuda(), layer.bias)
    saved = layer.state_dict()
    for key, value in state.items():
        assert torch.equal(saved[key].cpu(), value), key
    cpu_layer = BCQLinear(576, 96, planes=3, group_size=64)
    cpu_layer.load_state_dict(state)
    assert torch.equal(layer.dequantize(torch.float64).cpu(), cpu_layer.dequantize(torch.float64))


def test_bcq_linear_under_cuda_graph_and_compile():
    torch._dynamo.reset()
    t, w_t = random_bcq(576, 96, 2, 128, act_order=True)
    layer = BCQLinear(576, 96, bias=False, planes=2, group_size=128, device="cuda")
    layer.load_state_dict({name: v.cuda() for name, v in t.items()})
    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    for rows in (2, 2, 2, 40, 40, 40):  # repeated shapes: recorded, then replayed
        x = torch.randn(rows, 576, device="cuda", dtype=torch.float16)
        y = compiled(x).clone()
        assert torch.equal(y, layer(x))
        assert_close_to_reference(y, x, w_t.cuda())
    # The reference path on the same layer (float64 compute) agrees too.
    x = torch.randn(3, 576, device="cuda", dtype=torch.float16)
    expected = bcq_format.gemm(x, t["qplanes"].cuda(), t["alpha"].cuda(), t["offset"].cuda(), t["g_idx"].cuda(), None,
                               128, compute_dtype=torch.float64)
    assert ((layer(x).double() - expected.double()).norm() / expected.double().norm()).item() < 2e-3
