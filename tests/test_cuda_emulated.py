"""The CUDA kernels, run on the CPU emulator of tests/emulation, against the float64 reference.

The kernel sources (csrc/cuda) are compiled with g++ on top of tests/emulation/cuda_emulator.h, which runs every
CUDA thread as a fiber and emulates barriers, warp shuffles and votes, cp.async, ldmatrix and mma.sync. The
harness runs each op through the same plan and launchers as the CUDA op, so these tests cover the kernels' index maths,
pipelines, split-K and edge cases on machines without a GPU; tests/test_cuda.py then checks the real thing on
one. Built with AddressSanitizer and UBSan where the compiler has them: every access outside a tensor or outside
shared memory fails the test, as compute-sanitizer's memcheck would on the GPU. The main cases run in two modes:
warps running ahead of each other first to last with asynchronous copies landing at their wait, and last to first
with copies landing at issue, so a missing barrier or an early read or refill of a pipeline stage gives a wrong
result (test_emulator_catches_missing_barriers_and_waits shows each on a small kernel).
"""
import concurrent.futures
import hashlib
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import torch

from bitstream import expected_weight_t, pack_bitstream, pack_fragment_order, random_layer
from test_bcq_ops import assert_dequantized_close, random_bcq
from test_cuda import assert_close_to_reference

from gptq_kernels.gptq import gptq_block_torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMULATION = ROOT / "tests" / "emulation"
CUDA_HOME = pathlib.Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
# The kernel sources the harness links: every fused gemm kernel, the layout kernels, the GPTQ column loop and the
# binary-coded (BCQ) kernels.
KERNEL_SOURCES = [f"csrc/cuda/gemv_{b}bit.cu" for b in (2, 3, 4, 8)] + \
                 [f"csrc/cuda/gemm_mma_{b}bit.cu" for b in (2, 3, 4, 8)] + \
                 [f"csrc/cuda/gemv_tc_{b}bit.cu" for b in (2, 3, 4)] + \
                 [f"csrc/cuda/gemm_wgmma_{b}bit.cu" for b in (2, 3, 4, 8)] + \
                 ["csrc/cuda/gemm_fused.cu", "csrc/cuda/layout_kernels.cu", "csrc/cuda/gptq_block_kernel.cu",
                  "csrc/cuda/bcq_fused.cu", "csrc/cuda/bcq_gemv_2planes.cu", "csrc/cuda/bcq_gemv_3planes.cu",
                  "csrc/cuda/bcq_dequantize.cu"]
H100_SMS = 132  # the plans the tests run are those of an H100/H200 unless a test says otherwise
# Emulator modes: (reverse_order, eager_async_copies); see cuda_emulator.h.
MODES = [(0, 0), (1, 1)]
TYPE_NAMES = {torch.float16: "half", torch.bfloat16: "bfloat16", torch.float32: "float"}


def _compiler():
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None or not (CUDA_HOME / "include" / "cuda_fp16.h").exists():
        return None
    return cxx


def _sanitizer_flags(cxx, workdir):
    """-fsanitize=address,undefined when the toolchain can build and run such a program, else nothing."""
    probe = workdir / "probe.cpp"
    probe.write_text("int main() { return 0; }\n")
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    built = subprocess.run([cxx, *flags, str(probe), "-o", str(workdir / "probe")], capture_output=True)
    if built.returncode == 0 and subprocess.run([str(workdir / "probe")], capture_output=True).returncode == 0:
        return flags
    return []


def _emulator_flags(cxx, workdir):
    """g++ flags that compile CUDA sources for the emulator: C++17, sanitizers where they work, the project's and
    CUDA's headers, cuda_emulator.h forced in first."""
    return ["-std=c++17", "-O1", "-g", "-fno-omit-frame-pointer", "-Wall", "-Wno-unknown-pragmas",
            *_sanitizer_flags(cxx, workdir),
            f"-I{ROOT / 'csrc'}", f"-I{CUDA_HOME / 'include'}", "-include", str(EMULATION / "cuda_emulator.h")]


@pytest.fixture(scope="session")
def harness():
    """The emulator harness, built once per source state (cached under build/emulation)."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("needs g++ and the CUDA headers (CUDA_HOME) to compile the kernels for the emulator")
    headers = sorted((ROOT / "csrc").rglob("*.h")) + sorted((ROOT / "csrc" / "cuda").glob("*.cuh")) + \
        sorted(EMULATION.glob("*.h"))
    sources = [ROOT / s for s in KERNEL_SOURCES] + [EMULATION / "harness.cpp", EMULATION / "selftest_kernels.cu"]
    digest = hashlib.sha256()
    for path in headers + sources:
        digest.update(path.read_bytes())
    workdir = ROOT / "build" / "emulation" / digest.hexdigest()[:16]
    binary = workdir / "harness"
    if binary.exists():
        return binary
    workdir.mkdir(parents=True, exist_ok=True)
    flags = _emulator_flags(cxx, workdir)

    def compile_one(source):
        obj = workdir / (source.name + ".o")
        language = ["-x", "c++"] if source.suffix == ".cu" else []
        result = subprocess.run([cxx, *flags, *language, "-c", str(source), "-o", str(obj)],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"compiling {source} for the emulator failed:\n{result.stderr[-4000:]}"
        return obj

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        objects = list(pool.map(compile_one, sources))
    link = subprocess.run([cxx, *flags, *map(str, objects), "-o", str(binary) + ".tmp"], capture_output=True, text=True)
    assert link.returncode == 0, link.stderr[-4000:]
    (workdir / "flags.txt").write_text(" ".join(flags))
    os.replace(str(binary) + ".tmp", binary)
    for stale in workdir.parent.iterdir():  # harnesses of earlier source states
        if stale != workdir:
            shutil.rmtree(stale, ignore_errors=True)
    return binary


def _write(path, tensor):
    t = tensor.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    t.numpy().tofile(path)


def _read(path, dtype, shape):
    raw = np.fromfile(path, dtype=np.uint8)
    return torch.from_numpy(raw.copy()).view(dtype).reshape(shape)


def run_harness(harness, tmp_path, op, arrays, mode=(0, 0), expect_failure=False, **params):
    """Runs one op in the emulator; returns the job directory (outputs are JOB/<name>.bin), or the harness's
    error output when expect_failure is set."""
    job = tmp_path / f"job{len(list(tmp_path.iterdir()))}"
    job.mkdir()
    for name, tensor in arrays.items():
        if tensor is not None:
            _write(job / f"{name}.bin", tensor)
    params = dict(params, op=op, reverse_order=mode[0], eager_async_copies=mode[1])
    (job / "job.txt").write_text("".join(f"{k} {v}\n" for k, v in params.items()))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    result = subprocess.run([str(harness), str(job)], capture_output=True, text=True, env=env, timeout=600)
    if expect_failure:
        assert result.returncode != 0, f"emulated {op} was expected to fail ({params})"
        return result.stderr
    assert result.returncode == 0, f"emulated {op} failed ({params}):\n{result.stderr[-6000:]}"
    return job


def plan_of(job):
    return dict(line.split(" ", 1) for line in (job / "plan.txt").read_text().splitlines())


def emulated_gemm(harness, tmp_path, x, tensors, bits, group_size, bias=None, g_idx="given", sms=H100_SMS,
                  mma=True, mode=(0, 0), ldx=None, mma_min_rows=0, fragment_order=False, gemv_tc=True, wgmma=False):
    """y = x @ W^T (+ bias) through the emulated fused kernels; returns (y or None, plan). x is [M, ldx] storage
    of which the first K columns are used. mma_min_rows, gemv_tc, wgmma: GPTQ_KERNELS_MMA_MIN_ROWS (0: unset),
    GPTQ_KERNELS_GEMV_TC and GPTQ_KERNELS_WGMMA (on an H100/H200 with an sm_90a build)."""
    k = tensors["qweight"].shape[0] * 32 // bits
    n = tensors["qweight"].shape[1]
    m = x.shape[0]
    groups = tensors["scales"].shape[0]
    g = tensors["g_idx"] if isinstance(g_idx, str) else g_idx
    ldx = ldx or x.shape[1]
    job = run_harness(
        harness, tmp_path, "gemm",
        {"x": x, "qweight": tensors["qweight"], "qzeros": tensors["qzeros"], "scales": tensors["scales"],
         "g_idx": None if g is None else g.to(torch.int32), "bias": bias},
        mode, m=m, k=k, n=n, ldx=ldx, bits=bits, group_size=-1 if group_size == -1 else min(group_size, k),
        groups=groups, act=TYPE_NAMES[x.dtype], scale_type=TYPE_NAMES[tensors["scales"].dtype],
        bias_type=TYPE_NAMES[bias.dtype] if bias is not None else "float", sms=sms, mma=int(mma),
        x_aligned=int(ldx % 8 == 0), mma_min_rows=mma_min_rows, fragment_order=int(fragment_order),
        gemv_tc=int(gemv_tc), wgmma=int(wgmma))
    plan = plan_of(job)
    y = None if plan["path"] == "dequantize_then_gemm" else _read(job / "y.bin", x.dtype, (m, n))
    return y, plan


# ------------------------------------------------------------------------------------- the emulator itself
@pytest.mark.parametrize("mode", MODES + [(1, 0), (0, 1)])
def test_emulator_catches_missing_barriers_and_waits(harness, tmp_path, mode):
    """The bugs the emulator claims to catch, each in a small kernel next to its fixed form."""
    def selftest(case):
        return _read(run_harness(harness, tmp_path, "selftest", {}, mode, case=case) / "out.bin", torch.float32, (128,))

    threads = torch.arange(128, dtype=torch.float32)
    assert torch.equal(selftest("exchange"), (threads + 1) % 128 + 1)
    assert not torch.equal(selftest("exchange_no_barrier"), (threads + 1) % 128 + 1)
    assert torch.equal(selftest("async_copy"), threads)
    if mode[1] == 0:  # copies land at their wait: without one the stage still holds the poison
        assert selftest("async_copy_no_wait").isnan().all()
    error = run_harness(harness, tmp_path, "selftest", {}, mode, expect_failure=True, case="shuffle_after_exit")
    assert "lane 5 is named in a collective's mask but does not take part in it" in error
    # wgmma: every row of D is the column sums of k16 slice 2 of the swizzled tile x[n][k] = (k + n) % 17; thread i
    # reads column 8 (i % 8) + 2 (i % 4) + 1. Read before its wait, the accumulator still holds its zeros.
    columns = 8 * (threads % 8) + 2 * (threads % 4) + 1
    sums = sum((32 + k + columns) % 17 for k in range(16))
    assert torch.equal(selftest("wgmma"), sums)
    if mode[1] == 0:
        assert torch.equal(selftest("wgmma_no_wait"), torch.zeros(128))


def test_emulated_ldmatrix_yields_the_mma_a_fragment(harness, tmp_path):
    # Addressed row = lane % 16, column = 8 * (lane // 16), the four 8x8 tiles of ldmatrix.x4 are the quadrants of
    # a 16x16 A operand, in the register order of the m16n8k16 A fragment (PTX ISA): a0 = A[g][2t..2t+1],
    # a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..] with g = lane // 4, t = lane % 4.
    out = _read(run_harness(harness, tmp_path, "selftest", {}, case="ldmatrix") / "out.bin", torch.float32, (128,))
    expected = []
    for register in range(4):
        for lane in range(32):
            row = lane // 4 + 8 * (register % 2)
            col = 2 * (lane % 4) + 8 * (register // 2)
            expected.append(row * 16 + col + 256 * (row * 16 + col + 1))
    assert out.tolist() == expected


def test_wgmma_probe_passes_on_the_emulator(tmp_path):
    # benchmarks/wgmma_probe.cu checks on a GPU, one by one, the layouts the Hopper kernel assumes (A and accumulator
    # registers; B through the descriptor and the swizzle, every k16 slice, N = 64 and 128). Built on the emulator it
    # must pass as well: the kernel's helpers and the emulator's independent model of wgmma agree.
    cxx = _compiler()
    if cxx is None:
        pytest.skip("needs g++ and the CUDA headers (CUDA_HOME)")
    binary = tmp_path / "wgmma_probe"
    built = subprocess.run([cxx, *_emulator_flags(cxx, tmp_path), "-x", "c++", str(ROOT / "benchmarks" / "wgmma_probe.cu"),
                            "-o", str(binary)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    ran = subprocess.run([str(binary)], capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0 and "wgmma probe: every layout as assumed" in ran.stdout, ran.stdout + ran.stderr[-4000:]
    assert ran.stdout.count(": ok") == 13, ran.stdout


def test_emulator_reports_out_of_bounds_reads(harness, tmp_path):
    if "-fsanitize=address" not in (harness.parent / "flags.txt").read_text():
        pytest.skip("the compiler has no AddressSanitizer")
    error = run_harness(harness, tmp_path, "selftest", {}, expect_failure=True, case="read_past_end")
    assert "heap-buffer-overflow" in error


# ------------------------------------------------------------------------------------------------- gemm
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_emulated_gemm_matches_float64_reference(harness, tmp_path, bits, dtype, mode):
    # K = 576 with groups of 128 ends in a partial group; N = 96 leaves a partial column tile in both kernels.
    # Scales of every dtype under both activation dtypes (the kernels apply them in fp32); 8-bit weights under
    # bf16 take the tensor-core kernel's fp32 decode, all others its register decode.
    k, n = 576, 96
    for group_size, act_order, scale_dtype in ((128, False, dtype), (32, True, torch.float16), (-1, False, torch.float32)):
        sym = bool(torch.randint(0, 2, ()).item())
        tensors, q, scale, zero, g_idx = random_layer(k, n, bits, group_size, act_order=act_order, sym=sym,
                                                      scale_dtype=scale_dtype)
        w_t = expected_weight_t(q, scale, zero, g_idx)
        for rows, path in ((1, "gemv"), (3, "gemv"), (8, "gemv"), (9, "mma"), (33, "mma"), (100, "mma")):
            x = torch.randn(rows, k).to(dtype)
            y, plan = emulated_gemm(harness, tmp_path, x, tensors, bits, group_size, mode=mode)
            assert plan["path"] == path
            assert_close_to_reference(y, x, w_t)
            if not act_order and rows in (3, 9, 33):  # no g_idx, as QuantLinear calls it: groups counted per block
                y, _ = emulated_gemm(harness, tmp_path, x, tensors, bits, group_size, g_idx=None, mode=mode)
                assert_close_to_reference(y, x, w_t)
        if act_order:  # sorted by group, as QuantLinear stores act-order layers: the kernels' one-group fast path
            perm = torch.argsort(g_idx, stable=True)
            sorted_tensors = dict(tensors, qweight=pack_bitstream(q[perm].contiguous(), bits), g_idx=g_idx[perm])
            for rows in (2, 40):
                x = torch.randn(rows, k).to(dtype)
                y, _ = emulated_gemm(harness, tmp_path, x[:, perm].contiguous(), sorted_tensors, bits, group_size,
                                     mode=mode)
                assert_close_to_reference(y, x, w_t)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_emulated_fragment_order_matches_float64_reference(harness, tmp_path, bits, dtype, mode):
    # qweight in fragment order through every fused path: the GEMV kernel (x staged in stored order; here with
    # the tensor-core GEMV off, which test_emulated_tensor_core_gemv covers), the tensor-core kernel's one-load
    # decode from its swizzled tile (also at 1-8 rows), and the per-value paths of blocks whose rows mix groups
    # (groups of 48, unsorted act-order).
    k, n = 576, 96
    for group_size, act_order, scale_dtype in ((128, False, dtype), (48, False, torch.float32),
                                               (32, True, torch.float16), (-1, False, torch.bfloat16)):
        tensors, q, scale, zero, g_idx = random_layer(k, n, bits, group_size, act_order=act_order,
                                                      scale_dtype=scale_dtype)
        w_t = expected_weight_t(q, scale, zero, g_idx)
        tensors = dict(tensors, qweight=pack_fragment_order(q, bits))
        for rows, path, mma_min_rows in ((1, "gemv", 9), (6, "gemv", 9), (3, "mma", 1), (9, "mma", 9),
                                         (40, "mma", 9), (100, "mma", 9)):
            x = torch.randn(rows, k).to(dtype)
            for g in ("given", None) if not act_order else ("given",):
                y, plan = emulated_gemm(harness, tmp_path, x, tensors, bits, group_size, mode=mode, g_idx=g,
                                        mma_min_rows=mma_min_rows, fragment_order=True, gemv_tc=False)
                assert plan["path"] == path
                assert_close_to_reference(y, x, w_t)


@pytest.mark.parametrize("sms", [1, H100_SMS])
def test_emulated_fragment_order_long_k(harness, tmp_path, sms):
    # K = 2080: several K tiles per CTA and an odd last block; with 132 SMs, split K, CTAs starting inside groups
    # of 128 (their group counted per block from the CTA's first block).
    k, n, bits = 2080, 256, 4
    tensors, q, scale, zero, g_idx = random_layer(k, n, bits, 128)
    w_t = expected_weight_t(q, scale, zero, g_idx)
    tensors = dict(tensors, qweight=pack_fragment_order(q, bits))
    bias = torch.randn(n, dtype=torch.float16)
    for rows, gemv_tc in ((2, True), (2, False), (20, True), (64, True)):
        x = torch.randn(rows, k, dtype=torch.float16)
        y, plan = emulated_gemm(harness, tmp_path, x, tensors, bits, 128, bias=bias, sms=sms, fragment_order=True,
                                g_idx=None, gemv_tc=gemv_tc)
        assert_close_to_reference(y, x, w_t, bias)


def _tensor_core_gemv_layout(tensors, q, bits):
    """The layout the tensor-core GEMV and the Hopper kernel read (QuantLinear's on CUDA): fragment order for 2 and
    4 bits, the checkpoint order for 3 and 8."""
    return (tensors, False) if bits in (3, 8) else (dict(tensors, qweight=pack_fragment_order(q, bits)), True)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_emulated_tensor_core_gemv(harness, tmp_path, bits, dtype, mode):
    # 1-16 rows without g_idx take the tensor-core GEMV (2- and 4-bit weights in fragment order, 3-bit in the
    # checkpoint order). K = 576 is 18 blocks: a full x stage of 16 and a partial one, and a last group of 64 rows
    # under groups of 128; N = 160 leaves three warps of the second CTA past N (and 3-bit zero points that straddle
    # qzeros words). Scales of every dtype; 1-8 rows fill part or all of one 8-row tile of the mma's B operand
    # (lanes t = 0..3 write rows 2t and 2t + 1), 9-16 rows two tiles.
    k, n = 576, 160
    for group_size, scale_dtype in ((128, dtype), (32, torch.float32), (64, dtype), (-1, torch.float16)):
        tensors, q, scale, zero, g_idx = random_layer(k, n, bits, group_size, scale_dtype=scale_dtype)
        w_t = expected_weight_t(q, scale, zero, g_idx)
        tensors, fragment = _tensor_core_gemv_layout(tensors, q, bits)
        for rows in (1, 2, 5, 8, 9, 14, 16):
            x = torch.randn(rows, k).to(dtype)
            bias = torch.randn(n).to(dtype) if rows % 2 else None
            y, plan = emulated_gemm(harness, tmp_path, x, tensors, bits, group_size, bias=bias, g_idx=None, sms=1,
                                    fragment_order=fragment, mode=mode)
            assert plan["path"] == "gemv_tc", plan
            assert_close_to_reference(y, x, w_t, bias)
    # What it does not take: a g_idx, groups that split blocks (or that its batches of load would split), the
    # checkpoint order of 2- and 4-bit weights, 17 rows, or switched off; and with GPTQ_KERNELS_MMA_MIN_ROWS set,
    # the rows from there on.
    tensors, q, scale, zero, g_idx = random_layer(k, n, bits, 64)
    ours, fragment = _tensor_core_gemv_layout(tensors, q, bits)
    x = torch.randn(4, k).to(dtype)

    def path(x, tensors, group_size, **options):
        return emulated_gemm(harness, tmp_path, x, tensors, bits, group_size, **options)[1]["path"]

    assert path(x, ours, 64, fragment_order=fragment) == "gemv"
    assert path(x, ours, 64, g_idx=None, fragment_order=fragment, gemv_tc=False) == "gemv"
    assert path(torch.randn(17, k).to(dtype), ours, 64, g_idx=None, fragment_order=fragment) == "mma"
    assert path(torch.randn(12, k).to(dtype), ours, 64, g_idx=None, fragment_order=fragment, mma_min_rows=9) == "mma"
    if bits != 3:
        assert path(x, tensors, 64, g_idx=None) == "gemv"
        # GPTQ_KERNELS_MMA_MIN_ROWS is capped at 9 for the GEMV kernel's layers.
        assert path(torch.randn(12, k).to(dtype), tensors, 64, g_idx=None, mma_min_rows=17) == "mma"
    for group_size in (48, 96) if bits == 3 else (48,):  # 96 rows: 3 blocks, not a whole number of 3-bit batches
        odd, q_odd, *_ = random_layer(k, n, bits, group_size)
        odd, _ = _tensor_core_gemv_layout(odd, q_odd, bits)
        assert path(x, odd, group_size, g_idx=None, fragment_order=fragment) == "gemv"


@pytest.mark.parametrize("sms", [1, H100_SMS])
def test_emulated_tensor_core_gemv_long_k_split_and_strided_rows(harness, tmp_path, sms):
    # K = 2080 (65 blocks: four x stages and one block, a last load batch that runs past the CTA's K range), on one
    # SM (N = 512: 4 column tiles, K whole, bias added by the kernel) and on 132 (K split into CTAs of 12 blocks that
    # end inside a stage and, under groups of 256, start inside a group; partial sums reduced by the second kernel).
    # Rows of x 2200 elements apart.
    k, n = 2080, 512
    for bits, group_size in ((2, 128), (3, 64), (4, 256)):
        tensors, q, scale, zero, g_idx = random_layer(k, n, bits, group_size)
        w_t = expected_weight_t(q, scale, zero, g_idx)
        tensors, fragment = _tensor_core_gemv_layout(tensors, q, bits)
        bias = torch.randn(n, dtype=torch.float32)
        for rows in (1, 7, 12):
            storage = torch.randn(rows, 2200, dtype=torch.float16)
            y, plan = emulated_gemm(harness, tmp_path, storage, tensors, bits, group_size, bias=bias, sms=sms,
                                    g_idx=None, fragment_order=fragment, ldx=2200)
            assert plan["path"] == "gemv_tc" and (int(plan["splits"]) > 1) == (sms > 1), plan
            assert_close_to_reference(y, storage[:, :k], w_t, bias)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_emulated_wgmma_kernel(harness, tmp_path, bits, dtype, mode):
    # The Hopper kernel (GPTQ_KERNELS_WGMMA=1) takes 2- and 4-bit weights in fragment order and 3- and 8-bit weights
    # in the checkpoint order (x's pairs permuted into the B tile; 8-bit bf16 decoded through fp32) from 17 rows. K = 576 is
    # 18 blocks, 9 stages through 4 buffers (each refilled while the others are read), with a last group of 64 rows
    # under groups of 128; N = 160 leaves three warps of the second CTA past N. 17 and 64 rows fill part or all of a
    # 64-row tile (the wgmma's N), 65 and 130 one or two 128-row tiles on one SM (on many, 64-row tiles until the
    # 128-row ones fill the GPU; 3- and 8-bit always 64); rows past M are zero-filled and not written.
    k, n = 576, 160
    configs = ((128, dtype, (17, 64, 65, 130)), (32, torch.float32, (17, 130)), (64, dtype, (40, 130)),
               (-1, torch.float16, (17, 130)))
    for group_size, scale_dtype, row_counts in configs:
        tensors, q, scale, zero, g_idx = random_layer(k, n, bits, group_size, scale_dtype=scale_dtype)
        w_t = expected_weight_t(q, scale, zero, g_idx)
        tensors, fragment = _tensor_core_gemv_layout(tensors, q, bits)
        for rows in row_counts:
            x = torch.randn(rows, k).to(dtype)
            bias = torch.randn(n).to(dtype) if rows % 2 else None
            y, plan = emulated_gemm(harness, tmp_path, x, tensors, bits, group_size, bias=bias, g_idx=None, sms=1,
                                    fragment_order=fragment, mode=mode, wgmma=True)
            tile_rows = "64" if rows <= 64 or bits in (3, 8) else "128"
            assert plan["path"] == "wgmma" and plan["wgmma_tile_rows"] == tile_rows, plan
            assert_close_to_reference(y, x, w_t, bias)


def test_emulated_wgmma_kernel_split_k_strided_rows_and_routing(harness, tmp_path):
    # K = 2080 is 65 blocks: on 132 SMs K is split into CTAs of whole stages, the last of which ends on an odd block
    # (its stage's second block multiplies zero-filled x), and, under groups of 256, CTAs start inside groups.
    # Rows of x 2200 elements apart; 64-row tiles on 132 SMs, 128-row tiles on one (3- and 8-bit: 64).
    k, n = 2080, 256
    bias = torch.randn(n, dtype=torch.float32)
    for bits in (3, 8, 4):
        tensors, q, scale, zero, g_idx = random_layer(k, n, bits, 256)
        w_t = expected_weight_t(q, scale, zero, g_idx)
        layout, fragment = _tensor_core_gemv_layout(tensors, q, bits)
        for sms in (1, H100_SMS):
            storage = torch.randn(70, 2200, dtype=torch.float16)
            y, plan = emulated_gemm(harness, tmp_path, storage, layout, bits, 256, bias=bias, sms=sms, g_idx=None,
                                    fragment_order=fragment, ldx=2200, wgmma=True)
            assert plan["path"] == "wgmma" and (int(plan["splits"]) > 1) == (sms > 1), plan
            assert plan["wgmma_tile_rows"] == ("128" if sms == 1 and bits == 4 else "64"), plan
            assert_close_to_reference(y, storage[:, :k], w_t, bias)
    ours = layout  # 4-bit, fragment order
    # What it does not take: 16 rows, a g_idx, 2- and 4-bit weights in checkpoint order, groups that split blocks,
    # misaligned rows of x, or not asked for.
    x = torch.randn(40, k, dtype=torch.float16)

    def path(x, tensors, bits=4, group_size=256, **options):
        options = dict(dict(g_idx=None, fragment_order=True, wgmma=True), **options)
        return emulated_gemm(harness, tmp_path, x, tensors, bits, group_size, **options)[1]["path"]

    assert path(x, ours) == "wgmma"
    assert path(torch.randn(16, k, dtype=torch.float16), ours) == "gemv_tc"
    assert path(x, ours, g_idx="given") == "mma"
    assert path(x, tensors, fragment_order=False) == "mma"
    assert path(x, ours, wgmma=False) == "mma"
    assert path(torch.randn(40, 2200, dtype=torch.float16), ours, ldx=2196) == "dequantize_then_gemm"
    odd, q_odd, *_ = random_layer(k, n, 4, 48)
    assert path(x, dict(odd, qweight=pack_fragment_order(q_odd, 4)), group_size=48) == "mma"


def test_emulated_gemm_leaves_problems_from_2_28_to_cublas(harness, tmp_path):
    # The fused kernels count in 32-bit ints: from 2^28 rows of x (the Hopper kernel has no upper bound otherwise),
    # columns or rows of K the plan is dequantize + cuBLAS. Only the plan is made (the harness reads no array for
    # that path; planned for a fused kernel, these jobs would fail).
    for m, n, k in ((1, 1 << 28, 576), (1, 4096, 1 << 28), (1 << 28, 4096, 576)):
        job = run_harness(harness, tmp_path, "gemm", {}, m=m, k=k, n=n, ldx=k, bits=4, group_size=128,
                          groups=k // 128, act="half", scale_type="half", bias_type="float", sms=H100_SMS,
                          fragment_order=1, wgmma=1)
        assert plan_of(job)["path"] == "dequantize_then_gemm"


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("sms", [1, H100_SMS])
def test_emulated_gemm_split_k_bias_and_long_k(harness, tmp_path, bits, sms):
    # K = 2080 walks several x stages and K tiles per CTA and ends in an odd 32-row block (half a K tile of the
    # tensor-core kernel). On one SM, N = 512 gives both kernels enough CTAs to keep K whole (they write y and
    # add the bias themselves); 132 SMs split K (fp32 partial sums, then the reduction kernel adds them up and
    # adds the bias).
    k, n, group_size = 2080, 512, 64
    tensors, q, scale, zero, g_idx = random_layer(k, n, bits, group_size)
    w_t = expected_weight_t(q, scale, zero, g_idx)
    for bias_dtype in (torch.float16, torch.float32):
        bias = torch.randn(n).to(bias_dtype)
        for rows in (1, 5, 20, 64):
            x = torch.randn(rows, k, dtype=torch.float16)
            y, plan = emulated_gemm(harness, tmp_path, x, tensors, bits, group_size, bias=bias, sms=sms)
            assert (int(plan["splits"]) > 1) == (sms > 1), plan
            assert_close_to_reference(y, x, w_t, bias)


@pytest.mark.parametrize("group_size", [16, 48, 100])
def test_emulated_gemm_groups_that_split_blocks(harness, tmp_path, group_size):
    # Groups that start inside a 32-row block take the kernels' per-row lookup path.
    tensors, q, scale, zero, g_idx = random_layer(576, 64, 4, group_size, scale_dtype=torch.bfloat16)
    w_t = expected_weight_t(q, scale, zero, g_idx)
    for rows in (1, 4, 40):
        x = torch.randn(rows, 576, dtype=torch.float16)
        for g in ("given", None):
            y, _ = emulated_gemm(harness, tmp_path, x, tensors, 4, group_size, g_idx=g)
            assert_close_to_reference(y, x, w_t)


def test_emulated_gemm_without_tensor_cores_and_with_strided_rows(harness, tmp_path):
    k, n, bits = 576, 160, 4
    tensors, q, scale, zero, g_idx = random_layer(k, n, bits, 64)
    w_t = expected_weight_t(q, scale, zero, g_idx)
    for rows in (9, 20, 32):  # the GEMV kernel in row tiles of 8, as with GPTQ_KERNELS_NO_MMA=1 or before sm_80
        x = torch.randn(rows, k, dtype=torch.float16)
        y, plan = emulated_gemm(harness, tmp_path, x, tensors, bits, 64, mma=False)
        assert plan["path"] == "gemv" and plan["rows_per_cta"] == "8"
        assert_close_to_reference(y, x, w_t)
    # Rows of x sliced out of a wider tensor: row stride 600 (a multiple of 8) keeps the tensor-core kernel, 581
    # sends up to 32 rows to the GEMV kernel and more to the general path.
    for ldx, rows, path in ((600, 40, "mma"), (581, 3, "gemv"), (581, 20, "gemv"), (581, 40, "dequantize_then_gemm")):
        storage = torch.randn(rows, ldx, dtype=torch.float16)
        y, plan = emulated_gemm(harness, tmp_path, storage, tensors, bits, 64, ldx=ldx)
        assert plan["path"] == path
        if y is not None:
            assert_close_to_reference(y, storage[:, :k], w_t)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_emulated_tensor_core_kernel_at_small_batches(harness, tmp_path, bits):
    # GPTQ_KERNELS_MMA_MIN_ROWS=1 sends 1-8 rows to the tensor-core kernel too (one 16-row tile, mostly empty).
    tensors, q, scale, zero, g_idx = random_layer(576, 96, bits, 64)
    w_t = expected_weight_t(q, scale, zero, g_idx)
    for rows in (1, 5, 8):
        x = torch.randn(rows, 576, dtype=torch.float16)
        y, plan = emulated_gemm(harness, tmp_path, x, tensors, bits, 64, mma_min_rows=1)
        assert plan["path"] == "mma"
        assert_close_to_reference(y, x, w_t)
    _, plan = emulated_gemm(harness, tmp_path, torch.randn(4, 576, dtype=torch.float16), tensors, bits, 64,
                            mma_min_rows=5)
    assert plan["path"] == "gemv"


# ------------------------------------------------------------------------------------------- layout ops
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_emulated_layout_ops_are_exact(harness, tmp_path, bits):
    for k, n in ((576, 96), (32, 40), (160, 3)):
        values = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32)
        packed = pack_bitstream(values, bits)
        job = run_harness(harness, tmp_path, "pack", {"values": values}, k=k, n=n, bits=bits)
        assert torch.equal(_read(job / "packed.bin", torch.int32, packed.shape), packed)
        job = run_harness(harness, tmp_path, "unpack", {"packed": packed}, k=k, n=n, bits=bits)
        assert torch.equal(_read(job / "values.bin", torch.int32, (k, n)), values)
        perm = torch.randperm(k)
        job = run_harness(harness, tmp_path, "permute_rows", {"packed": packed, "perm": perm}, k=k, n=n, bits=bits)
        assert torch.equal(_read(job / "packed_out.bin", torch.int32, packed.shape),
                           pack_bitstream(values[perm].contiguous(), bits))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_emulated_dequantize_is_exact(harness, tmp_path, bits):
    for group_size, act_order, scale_dtype, out_dtype in ((128, False, torch.float16, torch.float16),
                                                          (48, True, torch.bfloat16, torch.float32),
                                                          (-1, False, torch.float32, torch.bfloat16)):
        tensors, q, scale, zero, g_idx = random_layer(576, 96, bits, group_size, act_order=act_order,
                                                      scale_dtype=scale_dtype)
        w_t = expected_weight_t(q, scale, zero, g_idx)
        shape = dict(k=576, n=96, bits=bits, group_size=min(group_size, 576) if group_size != -1 else -1,
                     groups=tensors["scales"].shape[0], scale_type=TYPE_NAMES[scale_dtype],
                     out_type=TYPE_NAMES[out_dtype])
        job = run_harness(harness, tmp_path, "dequantize", tensors, **shape)
        # (q - zero) * scale is exact in fp32: one rounding, to the output dtype.
        out = _read(job / "out.bin", out_dtype, (576, 96))
        expected = w_t.float().to(out_dtype) if out_dtype != torch.float32 else w_t.float()
        assert torch.equal(out, expected)
        if bits in (2, 4):  # the same weight in fragment order (the large-batch path of gemm_fragment_ordered)
            job = run_harness(harness, tmp_path, "dequantize", dict(tensors, qweight=pack_fragment_order(q, bits)),
                              fragment_order=1, **shape)
            assert torch.equal(_read(job / "out.bin", out_dtype, (576, 96)), expected)


# ------------------------------------------------------------------------------------------- gptq_block
def _upper_factor(width, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(width, width, generator=g, dtype=torch.float64) / width ** 0.5 + torch.eye(width)
    return torch.linalg.cholesky(a @ a.t(), upper=True).float().contiguous()


@pytest.mark.parametrize("fit, bits, sym, scale_dtype", [(True, 4, True, torch.float16), (True, 3, False, torch.bfloat16),
                                                         (False, 2, False, torch.float32), (False, 8, True, torch.float16)])
def test_emulated_gptq_block_matches_the_reference(harness, tmp_path, fit, bits, sym, scale_dtype):
    # 300 rows: the last CTA of 128 threads is partly idle. Groups of 32 in a block of 96 columns: grids are
    # fitted mid-block as well as at its start.
    rows, width, group_size, offset = 300, 96, 32, 128
    w = torch.randn(rows, width) * 0.05
    u = _upper_factor(width, 1)
    scale = zero = None
    if not fit:
        scale = torch.rand(rows, width) * 0.01 + 0.005
        zero = torch.full((rows, width), float(1 << (bits - 1))) if sym else \
            torch.randint(0, 1 << bits, (rows, width)).float()
    arrays = {"w": w.t(), "u": u}
    if not fit:
        arrays.update(scale=scale.t(), zero=zero.t())
    job = run_harness(harness, tmp_path, "gptq_block", arrays, rows=rows, width=width, bits=bits, sym=int(sym),
                      fit=int(fit), group_size=group_size, column_offset=offset, scale_dtype=TYPE_NAMES[scale_dtype])
    got = [_read(job / f"{name}.bin", dtype, (width, rows)).t()
           for name, dtype in (("q", torch.int32), ("deq", torch.float32), ("err", torch.float32),
                               ("scale", torch.float32), ("zero", torch.float32))]
    expected = gptq_block_torch(w, u, bits, sym, group_size, offset, scale, zero, scale_dtype)
    q_ref = expected[0]
    # The kernel and the reference round the same float32 operations in the same order, but a compiler may
    # contract a multiply-add: a value on a rounding boundary can then land on the other side. Rare, never many.
    assert (got[0] != q_ref).float().mean() < 0.01
    same = (got[0] == q_ref).all(dim=1)
    assert same.float().mean() > 0.9
    for a, b in zip(expected[1:], got[1:]):
        torch.testing.assert_close(b[same], a[same], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------- binary-coded (BCQ)
def _bcq_params(t, k, group_size):
    return dict(k=k, n=t["qplanes"].shape[2], planes=t["qplanes"].shape[0],
                group_size=-1 if group_size == -1 else min(group_size, k), groups=t["alpha"].shape[0],
                alpha_type=TYPE_NAMES[t["alpha"].dtype], offset_type=TYPE_NAMES[t["offset"].dtype])


@pytest.mark.parametrize("planes", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", MODES)
def test_emulated_bcq_gemm_matches_float64_reference(harness, tmp_path, planes, dtype, mode):
    # K = 576 with groups of 128 ends in a partial group (and is one partial stage of 18 blocks); N = 96 leaves a
    # partial column tile. 1, 2, 3 and 8 rows: row tiles of 1, 2 and 4 (two of them for 8).
    k, n = 576, 96
    for group_size in (128, -1):
        t, w_t = random_bcq(k, n, planes, group_size)
        for rows in (1, 2, 3, 8):
            x = torch.randn(rows, k).to(dtype)
            bias = torch.randn(n).to(dtype) if rows == 3 else None
            job = run_harness(harness, tmp_path, "bcq_gemm", dict(t, x=x, bias=bias), mode, m=rows, sms=H100_SMS,
                              act=TYPE_NAMES[dtype], bias_type=TYPE_NAMES[dtype], **_bcq_params(t, k, group_size))
            assert_close_to_reference(_read(job / "y.bin", dtype, (rows, n)), x, w_t, bias)


def test_emulated_bcq_gemm_long_k_with_and_without_split(harness, tmp_path):
    # K = 2080: four full stages of 16 blocks and a partial one. One SM and N = 512 keep K in one CTA; 132 split it.
    k, n, group_size = 2080, 512, 64
    t, w_t = random_bcq(k, n, 2, group_size)
    for sms, split in ((1, False), (H100_SMS, True)):
        x = torch.randn(4, k, dtype=torch.float16)
        bias = torch.randn(n, dtype=torch.float16)
        job = run_harness(harness, tmp_path, "bcq_gemm", dict(t, x=x, bias=bias), m=4, sms=sms, act="half",
                          bias_type="half", **_bcq_params(t, k, group_size))
        assert (int(plan_of(job)["splits"]) > 1) == split
        assert_close_to_reference(_read(job / "y.bin", torch.float16, (4, n)), x, w_t, bias)


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
def test_emulated_bcq_dequantize(harness, tmp_path, planes):
    for group_size, dtype in ((32, torch.float16), (48, torch.bfloat16), (-1, torch.float32)):
        t, w_t = random_bcq(576, 96, planes, group_size, dtype=dtype)
        job = run_harness(harness, tmp_path, "bcq_dequantize", t, out_type=TYPE_NAMES[dtype],
                          **_bcq_params(t, 576, group_size))
        out = _read(job / "out.bin", dtype, (576, 96))
        assert_dequantized_close(out, w_t, t)
