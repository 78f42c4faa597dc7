"""Pure-PyTorch reference of the GPTQ layout: packing, unpacking, dequantization and the matmul.

Written for clarity, not speed: every compiled kernel is tested against these functions, and they are the
fallback where no compiled kernel applies. They work on any device and in float64.
"""
from __future__ import annotations

from typing import Optional

import torch

from .format import check_bits, default_g_idx

_WORD = 1 << 32


def _to_int32_words(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit words held in int64 -> the same bits as int32."""
    words = words & (_WORD - 1)
    return torch.where(words >= (1 << 31), words - _WORD, words).to(torch.int32)


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int values [K, N] in [0, 2^bits) -> int32 [K*bits/32, N], packed along dim 0 as a little-endian bit stream."""
    check_bits(bits)
    k, n = values.shape
    if k % 32:
        raise ValueError(f"pack_rows: values.shape[0] = {k} must be a multiple of 32")
    v = values.to(torch.int64).reshape(k // 32, 32, n)
    if v.numel() and (v.min() < 0 or v.max() >= (1 << bits)):
        raise ValueError(f"pack_rows: values must lie in [0, {1 << bits}) for {bits}-bit packing")
    words = torch.zeros(k // 32, bits, n, dtype=torch.int64, device=values.device)
    for j in range(32):
        word, shift = divmod(j * bits, 32)
        words[:, word] |= v[:, j] << shift
        if shift + bits > 32:  # the value's high bits continue in the next word
            words[:, word + 1] |= v[:, j] >> (32 - shift)
    return _to_int32_words(words).reshape(k // 32 * bits, n)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of pack_rows: int32 [K*bits/32, N] -> int32 [K, N]."""
    check_bits(bits)
    rows, n = packed.shape
    if rows % bits:
        raise ValueError(f"unpack_rows: packed.shape[0] = {rows} must be a multiple of bits = {bits}")
    words = packed.to(torch.int64).reshape(rows // bits, bits, n) & (_WORD - 1)
    mask = (1 << bits) - 1
    values = []
    for j in range(32):
        word, shift = divmod(j * bits, 32)
        v = words[:, word] >> shift
        if shift + bits > 32:
            v = v | (words[:, word + 1] << (32 - shift))
        values.append(v & mask)
    return torch.stack(values, dim=1).reshape(rows // bits * 32, n).to(torch.int32)


def permute_rows(packed: torch.Tensor, perm: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed [K*bits/32, N] -> packed, with out row r of the unpacked [K, N] matrix = row perm[r]."""
    return pack_rows(unpack_rows(packed, bits)[perm.long()], bits)


def pack_zeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Zero points [G, N] in [0, 2^bits) -> qzeros int32 [G, N*bits/32] in the "gptq" (v1) convention."""
    zeros = zeros.to(torch.int64)
    if zeros.numel() and (zeros.min() < 0 or zeros.max() >= (1 << bits)):
        raise ValueError(f"pack_zeros: zero points must lie in [0, {1 << bits}) for {bits}-bit packing")
    return zeros_to_checkpoint(zeros, bits, "gptq")


def unpack_zeros(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """qzeros int32 [G, N*bits/32] in the "gptq" (v1) convention -> the zero points int32 [G, N]."""
    return zeros_from_checkpoint(qzeros, bits, "gptq")


def _ones_per_field(bits: int) -> int:
    """The 32-bit word with a 1 in every bits-wide field (bits dividing 32)."""
    return sum(1 << (bits * j) for j in range(32 // bits))


def zeros_from_checkpoint(qzeros: torch.Tensor, bits: int, checkpoint_format: str = "gptq") -> torch.Tensor:
    """A checkpoint's qzeros -> zero points int32 [G, N], read the way GPTQModel reads them.

    "gptq_v2" stores the zero points themselves. "gptq" (v1) stores zero-1: for 2, 4 and 8 bits GPTQModel
    subtracts the ones from whole 32-bit words, so a zero point of 0 borrows from its neighbour, and reading
    adds them back word by word; for 3 bits (values cross words) it works value by value modulo 2^bits.
    Both readings agree with plain "stored + 1" whenever no zero point is 0.
    """
    if checkpoint_format == "gptq_v2":
        return unpack_rows(qzeros.t(), bits).t().contiguous()
    if checkpoint_format != "gptq":
        raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    if bits == 3:
        return ((unpack_rows(qzeros.t(), bits).t() + 1) % (1 << bits)).contiguous()
    words = ((qzeros.to(torch.int64) & (_WORD - 1)) + _ones_per_field(bits)) & (_WORD - 1)
    return unpack_rows(_to_int32_words(words).t(), bits).t().contiguous()


def zeros_to_checkpoint(zeros: torch.Tensor, bits: int, checkpoint_format: str = "gptq") -> torch.Tensor:
    """Zero points [G, N] -> a checkpoint's qzeros: the inverse of zeros_from_checkpoint."""
    if checkpoint_format == "gptq_v2":
        return pack_rows(zeros.t(), bits).t().contiguous()
    if checkpoint_format != "gptq":
        raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    if bits == 3:
        return pack_rows(((zeros.to(torch.int64) - 1) % (1 << bits)).t(), bits).t().contiguous()
    words = ((pack_rows(zeros.t(), bits).t().to(torch.int64) & (_WORD - 1)) - _ones_per_field(bits)) & (_WORD - 1)
    return _to_int32_words(words).contiguous()


def dequantize(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: Optional[torch.Tensor],
    bits: int,
    group_size: int,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """W^T as a dense [K, N] tensor: scales[g, n] * (q[k, n] - zero[g, n]), computed in `dtype` (default scales')."""
    dtype = dtype or scales.dtype
    q = unpack_rows(qweight, bits)
    k = q.shape[0]
    if g_idx is None:
        g_idx = default_g_idx(k, group_size, device=q.device)
    g = g_idx.long()
    zeros = unpack_zeros(qzeros, bits)
    return scales.to(dtype)[g] * (q.to(dtype) - zeros.to(dtype)[g])


def gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    bits: int,
    group_size: int,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """y = x @ W^T + bias in `compute_dtype` (default: x's dtype), returned in x's dtype."""
    compute_dtype = compute_dtype or x.dtype
    w = dequantize(qweight, qzeros, scales, g_idx, bits, group_size, dtype=compute_dtype)
    y = x.to(compute_dtype) @ w
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return y.to(x.dtype)
