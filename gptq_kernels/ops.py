"""Typed Python entry points to the compiled ops, and their shape functions for torch.compile.

The schemas live in csrc/ops.cpp (``torch.ops.gptq_kernels.*``); this module loads the extension, registers
a fake (meta) implementation for every op so that ``torch.compile(fullgraph=True)`` can trace through them,
and says which devices have a compiled kernel. Without the extension every function here raises, and
``QuantLinear`` falls back to gptq_kernels.reference.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

try:
    from . import _C  # noqa: F401  (importing it registers the ops)

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as error:  # not built: pure-PyTorch fallback only
    _IMPORT_ERROR = error
    warnings.warn(
        f"gptq_kernels: compiled extension not available ({error}); using the pure-PyTorch reference. "
        "Build it with `pip install --no-build-isolation -e .`",
        stacklevel=2,
    )


def compiled_available() -> bool:
    return _IMPORT_ERROR is None


def has_kernel(device_type: str, op: str = "gemm") -> bool:
    """Whether the compiled extension has a kernel for `op` on devices of this type ("cpu", "cuda")."""
    if _IMPORT_ERROR is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"gptq_kernels::{op}", key)


def cuda_archs() -> list[str]:
    """The GPU architectures the extension's CUDA code was built for (TORCH_CUDA_ARCH_LIST as setup.py built
    it, e.g. ["8.0", "8.6", "8.9", "9.0a"]); empty without CUDA kernels. On a GPU they do not cover, every CUDA op
    raises an error saying how to rebuild."""
    if _IMPORT_ERROR is not None:
        return []
    return [arch for arch in getattr(_C, "cuda_archs", "").split(";") if arch]


_REFERENCE_WARNED: set = set()


def warn_reference_path(layer: str, device_type: str) -> None:
    """Warns, once per process for each layer class and device type, that a layer runs the pure-PyTorch
    reference because the extension has no kernel for its device: correct but far slower, and easy to miss (a
    GPU machine whose build found no CUDA toolkit still runs, at a fraction of the speed)."""
    if device_type == "meta" or (layer, device_type) in _REFERENCE_WARNED:  # meta: shapes only, no arithmetic
        return
    _REFERENCE_WARNED.add((layer, device_type))
    if _IMPORT_ERROR is not None:
        reason = f"the compiled extension is not available ({_IMPORT_ERROR})"
    elif device_type == "cuda":
        reason = ("the extension was built without CUDA kernels (torch was a CPU-only build, setup.py found no CUDA "
                  "toolkit, or GPTQ_KERNELS_CPU_ONLY=1 was set); rebuild it with a CUDA toolkit in CUDA_HOME, "
                  "e.g. CUDA_HOME=/usr/local/cuda pip install --no-build-isolation -e .")
    else:
        reason = f"the extension has no kernels for {device_type} devices"
    warnings.warn(f"gptq_kernels: {layer} runs the pure-PyTorch reference on {device_type}, far slower than a "
                  f"compiled kernel: {reason}", stacklevel=2)


def _require_compiled():
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"gptq_kernels: the compiled extension is not available: {_IMPORT_ERROR}")


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [K, N] with entries in [0, 2^bits), K a multiple of 32 -> int32 [K*bits/32, N]."""
    _require_compiled()
    return torch.ops.gptq_kernels.pack(values, bits)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [K*bits/32, N] -> int32 [K, N]."""
    _require_compiled()
    return torch.ops.gptq_kernels.unpack(packed, bits)


def permute_rows(packed: torch.Tensor, perm: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed [K*bits/32, N] -> packed, with out row r of the unpacked matrix = row perm[r] (int64 [K])."""
    _require_compiled()
    return torch.ops.gptq_kernels.permute_rows(packed, perm, bits)


def has_fragment_order(bits: int) -> bool:
    """Whether `bits`-bit weights have a fragment order (the layout the CUDA kernels read fastest): 2 and 4."""
    return bits in (2, 4)


def to_fragment_order(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed [K*bits/32, N] in checkpoint order -> the same tensor shape in fragment order (bits 2 or 4).

    Fragment order permutes the 32 values of every block of every column so that each tensor-core lane reads its
    values of a block with one load (csrc/core/fragment_order.h). Only gemm_fragment_ordered reads it."""
    _require_compiled()
    return torch.ops.gptq_kernels.to_fragment_order(qweight, bits)


def from_fragment_order(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of to_fragment_order: back to the checkpoint order."""
    _require_compiled()
    return torch.ops.gptq_kernels.from_fragment_order(qweight, bits)


def dequantize(qweight, qzeros, scales, g_idx: Optional[torch.Tensor], bits: int, group_size: int) -> torch.Tensor:
    """W^T as a dense [K, N] tensor of scales' dtype."""
    _require_compiled()
    return torch.ops.gptq_kernels.dequantize(qweight, qzeros, scales, g_idx, bits, group_size)


def gemm(x, qweight, qzeros, scales, g_idx: Optional[torch.Tensor], bias: Optional[torch.Tensor], bits: int,
         group_size: int) -> torch.Tensor:
    """y = x @ W^T + bias for x [..., K]; y [..., N] in x's dtype."""
    _require_compiled()
    return torch.ops.gptq_kernels.gemm(x, qweight, qzeros, scales, g_idx, bias, bits, group_size)


def gemm_fragment_ordered(x, qweight, qzeros, scales, g_idx: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                          bits: int, group_size: int) -> torch.Tensor:
    """gemm with qweight in fragment order (bits 2 or 4; see to_fragment_order)."""
    _require_compiled()
    return torch.ops.gptq_kernels.gemm_fragment_ordered(x, qweight, qzeros, scales, g_idx, bias, bits, group_size)


def gptq_block(weight: torch.Tensor, hinv: torch.Tensor, bits: int, sym: bool, group_size: int,
               column_offset: int, scale: Optional[torch.Tensor] = None, zero: Optional[torch.Tensor] = None,
               scale_dtype: torch.dtype = torch.float16):
    """The inner column loop of blocked GPTQ over one block (see csrc/ops.cpp).

    Returns (q int32, dequantized, err, scale, zero), each [rows, B]; err is (w - dequantized) / hinv[j, j].
    """
    _require_compiled()
    return torch.ops.gptq_kernels.gptq_block(weight, hinv, bits, sym, group_size, column_offset, scale, zero,
                                            scale_dtype)


def hessian_factor(hessian: torch.Tensor, damp: float):
    """(R, info): R upper triangular with hessian + damp * I = R R^T (see csrc/ops.cpp); info 0 on success."""
    _require_compiled()
    return torch.ops.gptq_kernels.hessian_factor(hessian, damp)


def bcq_dequantize(qplanes: torch.Tensor, alpha: torch.Tensor, offset: torch.Tensor, group_size: int) -> torch.Tensor:
    """Binary-coded weight (gptq_kernels.bcq_format) -> W^T as a dense [K, N] tensor of alpha's dtype."""
    _require_compiled()
    return torch.ops.gptq_kernels.bcq_dequantize(qplanes, alpha, offset, group_size)


def bcq_gemm(x: torch.Tensor, qplanes: torch.Tensor, alpha: torch.Tensor, offset: torch.Tensor,
             bias: Optional[torch.Tensor], group_size: int) -> torch.Tensor:
    """y = x @ W^T + bias for a binary-coded W and x [..., K]; y [..., N] in x's dtype. Groups are contiguous
    (g = k // group_size): act-order layers must be sorted by group first, as BCQLinear does."""
    _require_compiled()
    return torch.ops.gptq_kernels.bcq_gemm(x, qplanes, alpha, offset, bias, group_size)


def _check_bits(bits: int) -> None:
    torch._check(bits in (2, 3, 4, 8), lambda: f"bits must be 2, 3, 4 or 8, got {bits}")


if _IMPORT_ERROR is None:

    @torch.library.register_fake("gptq_kernels::pack")
    def _pack_fake(values, bits):
        _check_bits(bits)
        torch._check(values.dim() == 2, lambda: "values must be 2-D")
        torch._check(values.shape[0] % 32 == 0, lambda: "values.shape[0] must be a multiple of 32")
        return values.new_empty((values.shape[0] // 32 * bits, values.shape[1]), dtype=torch.int32)

    @torch.library.register_fake("gptq_kernels::unpack")
    def _unpack_fake(packed, bits):
        _check_bits(bits)
        torch._check(packed.dim() == 2, lambda: "packed must be 2-D")
        torch._check(packed.shape[0] % bits == 0, lambda: "packed.shape[0] must be a multiple of bits")
        return packed.new_empty((packed.shape[0] // bits * 32, packed.shape[1]), dtype=torch.int32)

    @torch.library.register_fake("gptq_kernels::permute_rows")
    def _permute_rows_fake(packed, perm, bits):
        _check_bits(bits)
        torch._check(packed.dim() == 2, lambda: "packed must be 2-D")
        torch._check(packed.shape[0] % bits == 0, lambda: "packed.shape[0] must be a multiple of bits")
        torch._check(perm.dim() == 1 and perm.shape[0] == packed.shape[0] // bits * 32,
                     lambda: "perm must have one entry per unpacked row")
        return torch.empty_like(packed, memory_format=torch.contiguous_format)

    @torch.library.register_fake("gptq_kernels::dequantize")
    def _dequantize_fake(qweight, qzeros, scales, g_idx, bits, group_size):
        _check_bits(bits)
        return scales.new_empty((qweight.shape[0] // bits * 32, qweight.shape[1]))

    @torch.library.register_fake("gptq_kernels::gemm")
    def _gemm_fake(x, qweight, qzeros, scales, g_idx, bias, bits, group_size):
        _check_bits(bits)
        k = qweight.shape[0] // bits * 32
        torch._check(x.shape[-1] == k, lambda: f"x has {x.shape[-1]} features, the weight has K = {k}")
        return x.new_empty((*x.shape[:-1], qweight.shape[1]))

    @torch.library.register_fake("gptq_kernels::gemm_fragment_ordered")
    def _gemm_fragment_ordered_fake(x, qweight, qzeros, scales, g_idx, bias, bits, group_size):
        torch._check(has_fragment_order(bits), lambda: f"fragment order exists for 2- and 4-bit weights, got {bits}")
        return _gemm_fake(x, qweight, qzeros, scales, g_idx, bias, bits, group_size)

    @torch.library.register_fake("gptq_kernels::gptq_block")
    def _gptq_block_fake(weight, hinv, bits, sym, group_size, column_offset, scale, zero, scale_dtype):
        _check_bits(bits)
        torch._check(weight.dim() == 2, lambda: "weight must be 2-D [rows, B]")
        width = weight.shape[1]
        torch._check(tuple(hinv.shape) == (width, width), lambda: f"hinv must be [{width}, {width}]")
        torch._check((scale is None) == (zero is None), lambda: "pass both scale and zero or neither")
        return (weight.new_empty(weight.shape, dtype=torch.int32), torch.empty_like(weight),
                torch.empty_like(weight), torch.empty_like(weight), torch.empty_like(weight))

    def _check_bcq_weight(qplanes, alpha, offset, group_size):
        torch._check(qplanes.dim() == 3, lambda: "qplanes must be 3-D [planes, K/32, N]")
        planes, k, n = qplanes.shape[0], qplanes.shape[1] * 32, qplanes.shape[2]
        torch._check(1 <= planes <= 8, lambda: f"qplanes has {planes} planes, expected 1 to 8")
        torch._check(group_size == -1 or group_size > 0, lambda: f"group_size must be -1 or positive, got {group_size}")
        groups = 1 if group_size == -1 else (k + group_size - 1) // group_size
        torch._check(alpha.dim() == 3 and alpha.shape[0] == groups and alpha.shape[1] == planes
                     and alpha.shape[2] == n, lambda: f"alpha must be [{groups}, {planes}, {n}], got {tuple(alpha.shape)}")
        torch._check(offset.dim() == 2 and offset.shape[0] == groups and offset.shape[1] == n,
                     lambda: f"offset must be [{groups}, {n}], got {tuple(offset.shape)}")

    @torch.library.register_fake("gptq_kernels::bcq_dequantize")
    def _bcq_dequantize_fake(qplanes, alpha, offset, group_size):
        _check_bcq_weight(qplanes, alpha, offset, group_size)
        return alpha.new_empty((qplanes.shape[1] * 32, qplanes.shape[2]))

    @torch.library.register_fake("gptq_kernels::bcq_gemm")
    def _bcq_gemm_fake(x, qplanes, alpha, offset, bias, group_size):
        _check_bcq_weight(qplanes, alpha, offset, group_size)
        k = qplanes.shape[1] * 32
        torch._check(x.shape[-1] == k, lambda: f"x has {x.shape[-1]} features, the weight has K = {k}")
        return x.new_empty((*x.shape[:-1], qplanes.shape[2]))

    # Autograd for gemm: gradients flow to x and bias (the packed weight is integer, so it has none). This also
    # makes the compiled kernel run below autograd, where its internal ATen calls record nothing.
    def _gemm_setup_context(ctx, inputs, output):
        x, qweight, qzeros, scales, g_idx, bias, bits, group_size = inputs
        ctx.save_for_backward(qweight, qzeros, scales, g_idx)
        ctx.bits, ctx.group_size = bits, group_size
        ctx.x_dtype = x.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.fragment_order = False

    def _gemm_fragment_ordered_setup_context(ctx, inputs, output):
        _gemm_setup_context(ctx, inputs, output)
        ctx.fragment_order = True

    def _gemm_backward(ctx, grad):
        qweight, qzeros, scales, g_idx = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            if ctx.fragment_order:
                qweight = torch.ops.gptq_kernels.from_fragment_order(qweight, ctx.bits)
            w_t = torch.ops.gptq_kernels.dequantize(qweight, qzeros, scales, g_idx, ctx.bits, ctx.group_size)
            grad_x = (grad.float() @ w_t.float().t()).to(ctx.x_dtype)
        if ctx.needs_input_grad[5]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).float().sum(0).to(ctx.bias_dtype)
        return grad_x, None, None, None, None, grad_bias, None, None

    torch.library.register_autograd("gptq_kernels::gemm", _gemm_backward, setup_context=_gemm_setup_context)
    torch.library.register_autograd("gptq_kernels::gemm_fragment_ordered", _gemm_backward,
                                    setup_context=_gemm_fragment_ordered_setup_context)

    # The same for bcq_gemm: gradients flow to x and bias; the sign planes are integer.
    def _bcq_gemm_setup_context(ctx, inputs, output):
        x, qplanes, alpha, offset, bias, group_size = inputs
        ctx.save_for_backward(qplanes, alpha, offset)
        ctx.group_size = group_size
        ctx.x_dtype = x.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def _bcq_gemm_backward(ctx, grad):
        qplanes, alpha, offset = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            w_t = torch.ops.gptq_kernels.bcq_dequantize(qplanes, alpha, offset, ctx.group_size)
            grad_x = (grad.float() @ w_t.float().t()).to(ctx.x_dtype)
        if ctx.needs_input_grad[4]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).float().sum(0).to(ctx.bias_dtype)
        return grad_x, None, None, None, grad_bias, None

    torch.library.register_autograd("gptq_kernels::bcq_gemm", _bcq_gemm_backward,
                                    setup_context=_bcq_gemm_setup_context)
