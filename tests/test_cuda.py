"""CUDA pack/unpack/dequantize/gemm against the float64 reference built from the integers themselves.

Every test is marked `cuda` and skipped without a GPU (run them with `pytest -m cuda`). Matmul results must be
no worse than twice the error of a same-dtype PyTorch F.linear against the same float64 reference (the
flash-attention criterion), plus a small relative floor.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitstream import expected_weight_t, pack_bitstream, random_layer
from gptq_kernels import QuantLinear, ops, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not ops.has_kernel("cuda"), reason="the extension was built without CUDA kernels"),
]

BITS = [2, 3, 4, 8]
GROUP_SIZES = [32, 64, 128, -1]
HALF_DTYPES = [torch.float16, torch.bfloat16]
# 1..8: the GEMV kernel (1, 2, 4 or 8 rows per CTA); 9..256: the tensor-core kernel (16, 32 and 64 rows per CTA,
# 100 in two row tiles); 257: dequantize + cuBLAS with an odd M.
ROWS = [1, 3, 8, 9, 17, 33, 100, 257]
RELATIVE_FLOOR = 1e-4  # of the reference's norm: keeps near-exact cases from demanding the impossible


def cuda_layer(k, n, bits, group_size, act_order=False, sym=False, scale_dtype=torch.float16):
    tensors, q, scale, zero, g_idx = random_layer(k, n, bits, group_size, act_order=act_order, sym=sym,
                                                  scale_dtype=scale_dtype)
    tensors = {name: t.cuda() for name, t in tensors.items()}
    return tensors, expected_weight_t(q, scale, zero, g_idx).cuda(), q, g_idx


def big_layer(k, n, bits, group_size):
    """A random layer made on the GPU and packed with the CUDA pack (checked bit for bit against the independent
    packer in test_pack_and_unpack_are_exact): the numpy packer would need gigabytes at these sizes."""
    groups = 1 if group_size == -1 else -(-k // group_size)
    q = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32, device="cuda")
    zero = torch.randint(1, 1 << bits, (groups, n), dtype=torch.int32, device="cuda")
    scale = (torch.rand(groups, n, dtype=torch.float64, device="cuda") * 0.02 + 0.001).half()
    g_idx = (torch.arange(k, dtype=torch.int32, device="cuda") // (k if group_size == -1 else group_size))
    tensors = {"qweight": ops.pack(q, bits), "qzeros": ops.pack((zero - 1).t().contiguous(), bits).t().contiguous(),
               "scales": scale, "g_idx": g_idx.to(torch.int32)}
    return tensors, expected_weight_t(q, scale.double(), zero, g_idx)


def gemm(x, tensors, bits, group_size, bias=None, g_idx="given"):
    g = tensors["g_idx"] if isinstance(g_idx, str) else g_idx
    return ops.gemm(x, tensors["qweight"], tensors["qzeros"], tensors["scales"], g, bias, bits, group_size)


def poison_allocator():
    """Fills blocks of both pools of the caching allocator with NaN and frees them, so that the next allocations
    (the op's output among them) get NaN-filled memory: an element the kernels forget to write stays NaN."""
    small = [torch.full((1 << 18,), float("nan"), device="cuda") for _ in range(32)]  # 1 MiB each: small pool
    large = torch.full((16 << 20,), float("nan"), device="cuda")  # 64 MiB: large pool
    del small, large


def assert_close_to_reference(y, x, w_t, bias=None):
    """y against x @ w_t + bias in float64, bounded by twice the error of F.linear in x's dtype."""
    assert torch.isfinite(y).all(), "some output elements are not finite (unwritten or overflowed)"
    expected = x.double() @ w_t
    if bias is not None:
        expected = expected + bias.double()
    ours = (y.double() - expected).norm().item()
    torch_y = F.linear(x, w_t.t().to(x.dtype), None if bias is None else bias.to(x.dtype))
    theirs = (torch_y.double() - expected).norm().item()
    bound = 2 * theirs + RELATIVE_FLOOR * expected.norm().item()
    assert ours <= bound, f"error {ours:.3g} > bound {bound:.3g} (F.linear's error {theirs:.3g})"


def test_the_build_records_an_arch_that_runs_on_this_gpu():
    """ops.cuda_archs() holds code this GPU runs (SASS of its major version and no higher minor, an "a" target of
    exactly it, or PTX of no later version): the record the ops' error for uncovered GPUs quotes."""
    major, minor = torch.cuda.get_device_capability()

    def runs_here(arch):
        base, ptx = arch.split("+")[0], arch.endswith("+PTX")
        arch_major, arch_minor = (int(part) for part in base.rstrip("af").split("."))
        if ptx and (arch_major, arch_minor) <= (major, minor):
            return True
        if base.endswith("a"):
            return (arch_major, arch_minor) == (major, minor)
        return arch_major == major and arch_minor <= minor

    assert any(runs_here(arch) for arch in ops.cuda_archs()), (ops.cuda_archs(), (major, minor))


# --------------------------------------------------------------------------------------------- layout ops
@pytest.mark.parametrize("bits", BITS)
def test_pack_and_unpack_are_exact(bits):
    for k, n in ((576, 96), (32, 40), (4096, 3)):
        values = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32)
        packed = ops.pack(values.cuda(), bits)
        assert torch.equal(packed.cpu(), pack_bitstream(values, bits))
        assert torch.equal(ops.unpack(packed, bits).cpu(), values)
    # Non-contiguous input.
    values = torch.randint(0, 1 << bits, (64, 128), dtype=torch.int32, device="cuda")
    assert torch.equal(ops.pack(values[:, ::2], bits), ops.pack(values[:, ::2].contiguous(), bits))


@pytest.mark.parametrize("bits", BITS)
def test_permute_rows_matches_the_cpu_op(bits):
    for k, n in ((576, 96), (32, 40), (4096, 3)):
        values = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32)
        perm = torch.randperm(k)
        packed = pack_bitstream(values, bits)
        poison_allocator()
        out = ops.permute_rows(packed.cuda(), perm.cuda(), bits)
        assert torch.equal(out.cpu(), pack_bitstream(values[perm].contiguous(), bits))
        assert torch.equal(out.cpu(), ops.permute_rows(packed, perm, bits))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUP_SIZES + [48])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dequantize_is_exact(bits, group_size, act_order, scale_dtype):
    tensors, w_t, _, _ = cuda_layer(576, 96, bits, group_size, act_order=act_order, scale_dtype=scale_dtype)
    poison_allocator()
    out = ops.dequantize(tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"], bits, group_size)
    assert out.dtype == scale_dtype and out.shape == (576, 96) and out.is_cuda
    # q - zero is exact, and so is its product with the scale in fp32: one rounding, to the scales' dtype.
    assert torch.equal(out, w_t.to(scale_dtype))
    if not act_order and group_size != -1:  # g_idx None means k // group_size
        out_none = ops.dequantize(tensors["qweight"], tensors["qzeros"], tensors["scales"], None, bits, group_size)
        assert torch.equal(out_none, out)


# ------------------------------------------------------------------------------------------------- gemm
@pytest.mark.parametrize("bits,group_size,dtype,act_order",
                         list(itertools.product(BITS, GROUP_SIZES, HALF_DTYPES, [False, True])))
def test_gemm_matches_float64_reference(bits, group_size, dtype, act_order):
    k, n = 576, 96  # with group_size 128 the last group is partial (64 channels); N is not a multiple of 128
    sym = bool(torch.randint(0, 2, ()).item())
    tensors, w_t, q, g_idx = cuda_layer(k, n, bits, group_size, act_order=act_order, sym=sym)
    if act_order:  # also sorted by group, as QuantLinear stores act-order layers: the fused kernel's fast path
        perm = torch.argsort(g_idx, stable=True)
        sorted_tensors = dict(tensors, qweight=ops.pack(q[perm].contiguous().cuda(), bits),
                              g_idx=g_idx[perm].contiguous().cuda())
    for rows in ROWS:
        x = torch.randn(rows, k, device="cuda").to(dtype)
        poison_allocator()
        y = gemm(x, tensors, bits, group_size)
        assert y.dtype == dtype and y.shape == (rows, n)
        assert_close_to_reference(y, x, w_t)
        if act_order:
            assert_close_to_reference(gemm(x[:, perm.cuda()], sorted_tensors, bits, group_size), x, w_t)
        elif group_size != -1:
            assert torch.equal(gemm(x, tensors, bits, group_size, g_idx=None), y)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("k,n", [(4096, 256), (16384, 4096), (11008, 4096), (4096, 11008), (32, 32)])
def test_gemm_shapes_split_k_and_stages(bits, k, n):
    # Large K walks several x stages per CTA and is split over CTAs; N = 11008 leaves a partial column tile.
    group_size = 128 if k >= 128 else -1
    tensors, w_t = big_layer(k, n, bits, group_size)
    for rows in (1, 2, 5, 8, 20, 64, 200):
        x = torch.randn(rows, k, device="cuda", dtype=torch.float16)
        poison_allocator()
        y = gemm(x, tensors, bits, group_size)
        assert_close_to_reference(y, x, w_t)
        # Without g_idx the tensor-core kernel counts groups per block, also in CTAs that start inside a group.
        assert torch.equal(gemm(x, tensors, bits, group_size, g_idx=None), y)


@pytest.mark.parametrize("group_size", [16, 48, 100, 1000])
@pytest.mark.parametrize("rows", [1, 4, 40, 300])
def test_gemm_group_sizes_that_split_blocks(group_size, rows):
    tensors, w_t, _, _ = cuda_layer(576, 64, 4, group_size)
    x = torch.randn(rows, 576, device="cuda", dtype=torch.float16)
    assert_close_to_reference(gemm(x, tensors, 4, group_size), x, w_t)
    assert_close_to_reference(gemm(x, tensors, 4, group_size, g_idx=None), x, w_t)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gemm_scale_bias_and_activation_dtypes(scale_dtype, dtype):
    tensors, w_t, _, _ = cuda_layer(256, 64, 3, 64, scale_dtype=scale_dtype)
    for bias_dtype in (torch.float16, torch.bfloat16, torch.float32):
        bias = torch.randn(64, device="cuda").to(bias_dtype)
        for rows in (2, 40, 300):
            x = torch.randn(rows, 256, device="cuda").to(dtype)
            y = gemm(x, tensors, 3, 64, bias=bias)
            assert y.dtype == dtype
            assert_close_to_reference(y, x, w_t, bias)


@pytest.mark.parametrize("rows", [1, 5, 40, 300])
def test_gemm_3d_and_non_contiguous_inputs(rows):
    tensors, w_t, _, _ = cuda_layer(320, 64, 4, 32)
    x3 = torch.randn(2, rows, 320, device="cuda", dtype=torch.float16)
    y3 = gemm(x3, tensors, 4, 32)
    assert y3.shape == (2, rows, 64)
    assert_close_to_reference(y3.reshape(-1, 64), x3.reshape(-1, 320), w_t)
    # Transposed view, every other column of a wider tensor, a row-strided slice with 16-byte aligned rows (read
    # in place by every kernel) and one with misaligned rows (the tensor-core kernel cannot copy those).
    x_t = torch.randn(320, rows + 1, device="cuda", dtype=torch.float16).t()[:rows]
    x_strided = torch.randn(rows, 640, device="cuda", dtype=torch.float16)[:, ::2]
    x_rows = torch.randn(rows, 400, device="cuda", dtype=torch.float16)[:, 40:360]
    x_misaligned = torch.randn(rows, 330, device="cuda", dtype=torch.float16)[:, 3:323]
    for x in (x_t, x_strided, x_rows, x_misaligned):
        assert not x.is_contiguous()
        assert_close_to_reference(gemm(x, tensors, 4, 32), x, w_t)


def test_gemm_empty_batch():
    tensors, *_ = cuda_layer(64, 32, 4, 32)
    assert gemm(torch.randn(0, 64, device="cuda", dtype=torch.float16), tensors, 4, 32).shape == (0, 32)
    assert gemm(torch.randn(3, 0, 64, device="cuda", dtype=torch.float16), tensors, 4, 32).shape == (3, 0, 32)


@pytest.mark.parametrize("rows", [3, 40])
def test_gemm_is_deterministic(rows):
    tensors, _ = big_layer(8192, 512, 4, 128)  # split over many CTAs
    x = torch.randn(rows, 8192, device="cuda", dtype=torch.bfloat16)
    y = gemm(x, tensors, 4, 128)
    for _ in range(3):
        assert torch.equal(gemm(x, tensors, 4, 128), y)


def test_gemm_matches_the_reference_module():
    tensors, *_ = cuda_layer(576, 96, 3, 128, act_order=True)
    x = torch.randn(4, 576, device="cuda", dtype=torch.float16)
    expected = reference.gemm(x, tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"], None,
                              3, 128, compute_dtype=torch.float64)
    y = gemm(x, tensors, 3, 128)
    assert ((y.double() - expected.double()).norm() / expected.double().norm()).item() < 2e-3


def test_gemm_runs_on_the_current_stream_and_device_of_the_weight():
    tensors, w_t, _, _ = cuda_layer(576, 96, 4, 128)
    x = torch.randn(2, 576, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = gemm(x, tensors, 4, 128)
    torch.cuda.current_stream().wait_stream(stream)
    assert_close_to_reference(y, x, w_t)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("group_size", [48, 128])
def test_gemm_fragment_ordered_matches_float64_reference(bits, dtype, group_size):
    tensors, w_t, q, g_idx = cuda_layer(576, 96, bits, group_size)
    fragment = ops.to_fragment_order(tensors["qweight"], bits)
    assert torch.equal(fragment.cpu(), ops.to_fragment_order(tensors["qweight"].cpu(), bits))
    assert torch.equal(ops.from_fragment_order(fragment, bits), tensors["qweight"])
    for rows in ROWS:
        x = torch.randn(rows, 576, device="cuda").to(dtype)
        poison_allocator()
        y = ops.gemm_fragment_ordered(x, fragment, tensors["qzeros"], tensors["scales"], tensors["g_idx"], None,
                                      bits, group_size)
        assert_close_to_reference(y, x, w_t)
    if group_size != 128:
        return
    big, big_w_t = big_layer(16384, 4096, bits, 128)  # several K tiles and x stages per CTA, split K
    fragment = ops.to_fragment_order(big["qweight"], bits)
    for rows in (1, 8, 20, 64, 200):
        x = torch.randn(rows, 16384, device="cuda", dtype=dtype)
        poison_allocator()
        y = ops.gemm_fragment_ordered(x, fragment, big["qzeros"], big["scales"], None, None, bits, 128)
        assert_close_to_reference(y, x, big_w_t)


def gemm_as_quant_linear(x, tensors, bits, group_size, bias=None):
    """gemm without g_idx on the layout QuantLinear keeps on CUDA: 2- and 4-bit weights in fragment order
    (gemm_fragment_ordered), 3- and 8-bit in the checkpoint order (gemm)."""
    if not ops.has_fragment_order(bits):
        return ops.gemm(x, tensors["qweight"], tensors["qzeros"], tensors["scales"], None, bias, bits, group_size)
    return ops.gemm_fragment_ordered(x, ops.to_fragment_order(tensors["qweight"], bits), tensors["qzeros"],
                                     tensors["scales"], None, bias, bits, group_size)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_gemm_small_batches_without_g_idx(bits, dtype):
    # 1-16 rows without g_idx take the tensor-core GEMV (gemv_tc_kernel.cuh): 2- and 4-bit weights in fragment
    # order (gemm_fragment_ordered), 3-bit in the checkpoint order (gemm). Each of its group classes (32, 64,
    # multiples of 128 rows, one group), every scale dtype, a bias, N = 160 (a CTA whose last warps lie past N),
    # K = 1088 (two x stages, the second partial; groups of 256 end in a partial one) and rows of x 8 elements
    # apart from the next.
    k, n = 1088, 160
    for group_size, scale_dtype in ((32, dtype), (64, torch.float32), (128, torch.float16), (256, dtype),
                                    (-1, torch.bfloat16)):
        tensors, w_t, _, _ = cuda_layer(k, n, bits, group_size, scale_dtype=scale_dtype)
        for rows in (*range(1, 9), 9, 12, 16):
            storage = torch.randn(rows, k + 8, device="cuda").to(dtype)
            x = storage[:, :k]
            bias = torch.randn(n, device="cuda").to(dtype) if rows % 2 else None
            poison_allocator()
            assert_close_to_reference(gemm_as_quant_linear(x, tensors, bits, group_size, bias), x, w_t, bias)
    # Long K, split over CTAs: 70B down-projection width.
    big, big_w_t = big_layer(28672, 1024, bits, 128)
    for rows in (1, 5, 13):
        x = torch.randn(rows, 28672, device="cuda", dtype=dtype)
        poison_allocator()
        assert_close_to_reference(gemm_as_quant_linear(x, big, bits, 128), x, big_w_t)


def _kernels_run(fn):
    """Names of the CUDA kernels fn launches (torch's profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {event.key for event in prof.key_averages()}


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the Hopper kernel (wgmma, sm_90a) runs on H100/H200 only")
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_gemm_hopper_kernel(bits, dtype, monkeypatch):
    # GPTQ_KERNELS_WGMMA=1 (read at every call) sends what QuantLinear runs without g_idx to the Hopper kernel from 17
    # rows (gemm_wgmma_kernel.cuh), every bit width: 64-row tiles, and 128-row tiles for 2 and 4 bits where they fill
    # the GPU, rows past M in the last tile; every group size it takes and scale dtype, a bias, N = 160 (a CTA whose
    # last warps lie past N), K = 1088 (17 blocks: the last stage's second block past K), rows of x 8 elements apart;
    # and a 70B down projection whose K is split over CTAs. The profiler checks the kernel really ran.
    monkeypatch.setenv("GPTQ_KERNELS_WGMMA", "1")

    k, n = 1088, 160
    for group_size, scale_dtype in ((32, dtype), (64, torch.float32), (128, torch.float16), (-1, torch.bfloat16)):
        tensors, w_t, _, _ = cuda_layer(k, n, bits, group_size, scale_dtype=scale_dtype)
        for rows in (17, 64, 65, 200, 1024):
            storage = torch.randn(rows, k + 8, device="cuda").to(dtype)
            x = storage[:, :k]
            bias = torch.randn(n, device="cuda").to(dtype) if rows % 2 else None
            poison_allocator()
            assert_close_to_reference(gemm_as_quant_linear(x, tensors, bits, group_size, bias), x, w_t, bias)
    x = torch.randn(300, k, device="cuda", dtype=dtype)
    kernels = _kernels_run(lambda: gemm_as_quant_linear(x, tensors, bits, -1))
    assert any("gemm_wgmma_kernel" in name for name in kernels), kernels
    big, big_w_t = big_layer(28672, 1024, bits, 128)
    for rows in (17, 256):
        x = torch.randn(rows, 28672, device="cuda", dtype=dtype)
        poison_allocator()
        assert_close_to_reference(gemm_as_quant_linear(x, big, bits, 128), x, big_w_t)


# ------------------------------------------------------------------------------------------ QuantLinear
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_quant_linear_on_cuda_keeps_fragment_order_internal(bits):
    tensors, w_t, _, _ = cuda_layer(576, 96, bits, 64, act_order=True)
    layer = QuantLinear(576, 96, bias=False, bits=bits, group_size=64, dtype=torch.float16, device="cuda")
    layer.load_state_dict(tensors)
    assert layer._fragment_ordered == (bits != 3)
    x = torch.randn(5, 576, device="cuda", dtype=torch.float16)
    y = layer(x)
    assert_close_to_reference(y, x, w_t)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, tensors[key]), key
    layer.cpu()  # the CPU kernels read the checkpoint order
    assert not layer._fragment_ordered
    assert torch.equal(layer.state_dict()["qweight"], tensors["qweight"].cpu())
    layer.cuda()
    assert layer._fragment_ordered == (bits != 3)
    assert torch.equal(layer(x), y)


@pytest.mark.parametrize("rows", [4, 64, 300])
@pytest.mark.parametrize("act_order", [False, True])
def test_quant_linear_forward_under_cuda_graph(rows, act_order):
    torch.manual_seed(0)
    tensors, w_t, _, _ = cuda_layer(576, 96, 4, 64, act_order=act_order)
    layer = QuantLinear(576, 96, bias=True, bits=4, group_size=64, dtype=torch.float16, device="cuda")
    layer.load_state_dict(dict(tensors, bias=torch.randn(96, device="cuda", dtype=torch.float16)))
    static_x = torch.randn(rows, 576, device="cuda", dtype=torch.float16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as the CUDA graph docs ask
        for _ in range(2):
            layer(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = layer(static_x)
    for _ in range(2):
        x = torch.randn(rows, 576, device="cuda", dtype=torch.float16)
        static_x.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, layer(x))
        assert_close_to_reference(static_y, x, w_t, layer.bias)


def test_quant_linear_torch_compile_reduce_overhead():
    # mode="reduce-overhead" replays CUDA graphs: the op must not synchronise or branch on tensor values.
    torch._dynamo.reset()
    tensors, w_t, _, _ = cuda_layer(576, 96, 3, 128, act_order=True)
    layer = QuantLinear(576, 96, bias=False, bits=3, group_size=128, dtype=torch.float16, device="cuda")
    layer.load_state_dict(tensors)
    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    for rows in (2, 2, 2, 40, 40, 40):  # repeated shapes: recorded, then replayed
        x = torch.randn(rows, 576, device="cuda", dtype=torch.float16)
        y = compiled(x).clone()
        assert torch.equal(y, layer(x))
        assert_close_to_reference(y, x, w_t)


def test_quant_linear_from_linear_on_cuda():
    linear = nn.Linear(576, 96).cuda()
    layer = QuantLinear.from_linear(linear, bits=4, group_size=128, dtype=torch.float16)
    x = torch.randn(3, 576, device="cuda", dtype=torch.float16)
    w_t = layer.dequantize(torch.float64).t()
    assert_close_to_reference(layer(x), x, w_t, layer.bias)


# ----------------------------------------------------------------------------------------------- errors
def _cuda_bad_inputs():
    # The CPU cases with every tensor moved to the GPU: CUDA and CPU share the checks and their messages. The
    # g_idx value check is CPU-only (on the GPU it would need a host synchronisation).
    from test_cpu_ops import _bad_inputs

    for param in _bad_inputs():
        args, match = param.values
        if param.id == "g_idx value":
            continue
        args = {name: value.cuda() if isinstance(value, torch.Tensor) else value for name, value in args.items()}
        yield pytest.param(args, match, id=param.id)
    t, *_ = random_layer(64, 64, 4, 32)
    args = dict(x=torch.randn(2, 64), qweight=t["qweight"].cuda(), qzeros=t["qzeros"].cuda(),
                scales=t["scales"].cuda(), g_idx=None, bias=None, bits=4, group_size=32)
    yield pytest.param(args, "x is on cpu but qweight is on cuda", id="x on the CPU")


@pytest.mark.parametrize("args,match", list(_cuda_bad_inputs()) if torch.cuda.is_available() else [])
def test_gemm_rejects_bad_inputs_with_clear_errors(args, match):
    with pytest.raises(RuntimeError, match=r"gptq_kernels\.gemm: .*" + match):
        ops.gemm(**args)
    with pytest.raises(RuntimeError, match=r"gptq_kernels\.gemm_fragment_ordered: .*" + match):
        ops.gemm_fragment_ordered(**args)


def test_layout_ops_reject_bad_inputs():
    with pytest.raises(RuntimeError, match="gptq_kernels.pack: values.size\\(0\\) = 33 must be a multiple of 32"):
        ops.pack(torch.zeros(33, 8, dtype=torch.int32, device="cuda"), 4)
    with pytest.raises(RuntimeError, match="gptq_kernels.unpack: bits must be 2, 3, 4 or 8, got 5"):
        ops.unpack(torch.zeros(5, 8, dtype=torch.int32, device="cuda"), 5)
    t, *_ = random_layer(64, 64, 4, 32)
    with pytest.raises(RuntimeError, match="gptq_kernels.dequantize: scales must have shape"):
        ops.dequantize(t["qweight"].cuda(), t["qzeros"].cuda(), t["scales"][:1].contiguous().cuda(), None, 4, 32)


def test_opcheck():
    t, *_ = random_layer(96, 64, 3, 32, act_order=True)
    t = {name: v.cuda() for name, v in t.items()}
    x = torch.randn(3, 96, device="cuda", dtype=torch.float16)
    torch.library.opcheck(torch.ops.gptq_kernels.gemm,
                          (x, t["qweight"], t["qzeros"], t["scales"], t["g_idx"], torch.randn(64, device="cuda"), 3, 32))
    torch.library.opcheck(torch.ops.gptq_kernels.gemm, (x.float(), t["qweight"], t["qzeros"], t["scales"], None, None, 3, 32))
    torch.library.opcheck(torch.ops.gptq_kernels.dequantize, (t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 3, 32))
    values = torch.randint(0, 8, (64, 32), dtype=torch.int32, device="cuda")
    torch.library.opcheck(torch.ops.gptq_kernels.pack, (values, 3))
    torch.library.opcheck(torch.ops.gptq_kernels.unpack, (ops.pack(values, 3), 3))


# ------------------------------------------------------------------------------------------- gptq_block
def _upper_factor(width, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(width, width, generator=g) / width ** 0.5 + torch.eye(width)
    return torch.linalg.cholesky(a @ a.t(), upper=True).contiguous()


@pytest.mark.parametrize("fit, bits, sym", [(True, 4, True), (True, 3, False), (False, 2, False), (False, 8, True)])
def test_gptq_block_matches_the_cpu_op(fit, bits, sym):
    rows, width, group_size, offset = 300, 128, 64, 128  # rows not a multiple of the CTA size
    w = torch.randn(rows, width) * 0.05
    u = _upper_factor(width, 1)
    scale = zero = None
    if not fit:
        scale = torch.rand(rows, width) * 0.01 + 0.005
        zero = torch.full((rows, width), float(1 << (bits - 1))) if sym else torch.randint(0, 1 << bits, (rows, width)).float()
    cpu = ops.gptq_block(w, u, bits, sym, group_size, offset, scale, zero, torch.float16)
    gpu = ops.gptq_block(w.cuda(), u.cuda(), bits, sym, group_size, offset,
                         None if scale is None else scale.cuda(), None if zero is None else zero.cuda(), torch.float16)
    q_cpu, q_gpu = cpu[0], gpu[0].cpu()
    # Contracted multiply-adds on the GPU may move a value across a rounding boundary: rare, never many.
    assert (q_cpu != q_gpu).float().mean() < 0.01
    same = (q_cpu == q_gpu).all(dim=1)  # rows that took the same path agree to rounding
    for a, b in zip(cpu[1:], gpu[1:]):
        torch.testing.assert_close(b.cpu()[same], a[same], rtol=1e-4, atol=1e-5)


def test_quantize_weight_on_cuda_matches_the_cpu():
    import gptq_kernels as gk

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2048, 576, generator=g) @ (torch.randn(576, 576, generator=g) * 0.1 + torch.eye(576))
    h = 2 * x.t() @ x / x.shape[0]
    w = torch.randn(96, 576, generator=g) * 0.05
    cpu = gk.quantize_weight(w, h, bits=3, group_size=128, desc_act=True)
    gpu = gk.quantize_weight(w.cuda(), h.cuda(), bits=3, group_size=128, desc_act=True)
    assert abs(gpu.error - cpu.error) <= 0.01 * cpu.error
    assert (gpu.dequantize().cpu() - cpu.dequantize()).abs().mean() <= 0.02 * cpu.dequantize().abs().mean()
