"""The binary-coding (BCQ) layer layout used by GPTQT, and its pure-PyTorch reference.

A binary-coded weight writes every weight as a sum of ``planes`` signed bits plus an offset:
``W[n, k] = sum_i alpha[g, i, n] * s_i[k, n] + offset[g, n]`` with ``s_i[k, n]`` in {-1, +1} and
``g = g_idx[k]``. For a linear layer with weight ``W`` of shape ``[N, K]`` and ``G = ceil(K / group_size)``
groups (``group_size = -1``: one group):

=========  ============================  ===================================================================
tensor     shape / dtype                 meaning
=========  ============================  ===================================================================
qplanes    [planes, K/32, N] int32       bit j of qplanes[i, w, n] is plane i's sign for input channel
                                         k = 32*w + j of output n: 1 means +1, 0 means -1
alpha      [G, planes, N] float16        the plane scales alpha[g, i, n] (any sign; usually positive)
offset     [G, N] float16                the offset of each group's levels
g_idx      [K] int32                     the group of input channel k (k // group_size unless act-order)
bias       [N] float16                   optional
=========  ============================  ===================================================================

Bit-planes are packed along K like GPTQ's ``qweight`` (32 input channels per word, N contiguous), so a byte
of a word holds the signs of 8 consecutive input channels: the index of a lookup table over 8 activations.
Checkpoints mark these layers with ``quant_method: "gptqt"`` (see gptq_kernels/checkpoint.py).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .format import FLOAT_DTYPES, check_group_size, default_g_idx, num_groups

#: Plane counts the layout accepts (the compiled kernels cover 2 and 3; the reference any of these).
SUPPORTED_PLANES = tuple(range(1, 9))


def check_planes(planes: int) -> None:
    if planes not in SUPPORTED_PLANES:
        raise ValueError(f"planes must be one of {SUPPORTED_PLANES}, got {planes!r}")


def bcq_tensor_shapes(in_features: int, out_features: int, planes: int,
                      group_size: int) -> Dict[str, Tuple[int, ...]]:
    groups = num_groups(in_features, group_size)
    return {
        "qplanes": (planes, in_features // 32, out_features),
        "alpha": (groups, planes, out_features),
        "offset": (groups, out_features),
        "g_idx": (in_features,),
        "bias": (out_features,),
    }


def check_bcq_tensors(tensors: Dict[str, Optional[torch.Tensor]], in_features: int, out_features: int,
                      planes: int, group_size: int, name: str = "layer",
                      required: Tuple[str, ...] = ("qplanes", "alpha", "offset")) -> None:
    """Raises ValueError naming the first tensor whose presence, shape or dtype does not fit the layout."""
    check_planes(planes)
    check_group_size(group_size)
    shapes = bcq_tensor_shapes(in_features, out_features, planes, group_size)
    expected_dtypes = {"qplanes": (torch.int32,), "g_idx": (torch.int32,), "alpha": FLOAT_DTYPES,
                       "offset": FLOAT_DTYPES, "bias": FLOAT_DTYPES}
    for key, shape in shapes.items():
        t = tensors.get(key)
        if t is None:
            if key in required:
                raise ValueError(f"{name}.{key} is missing")
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}.{key} has shape {tuple(t.shape)}, expected {shape} for "
                             f"in_features={in_features}, out_features={out_features}, planes={planes}, "
                             f"group_size={group_size}")
        if t.dtype not in expected_dtypes[key]:
            allowed = " or ".join(str(d).replace("torch.", "") for d in expected_dtypes[key])
            raise ValueError(f"{name}.{key} has dtype {str(t.dtype).replace('torch.', '')}, expected {allowed}")


# ------------------------------------------------------------------------------------------ reference
def pack_planes(signs: torch.Tensor) -> torch.Tensor:
    """Signs [planes, K, N] (values -1/+1, or 0/1 bits) -> qplanes int32 [planes, K/32, N]."""
    if signs.dim() != 3:
        raise ValueError(f"pack_planes: signs must be [planes, K, N], got shape {tuple(signs.shape)}")
    planes, k, n = signs.shape
    if k % 32:
        raise ValueError(f"pack_planes: K = {k} must be a multiple of 32")
    bits = (signs > 0).to(torch.int64).reshape(planes, k // 32, 32, n)
    shifts = torch.arange(32, dtype=torch.int64, device=signs.device).view(1, 1, 32, 1)
    words = (bits << shifts).sum(dim=2)  # < 2^32, exact in int64
    return torch.where(words >= (1 << 31), words - (1 << 32), words).to(torch.int32)


def unpack_planes(qplanes: torch.Tensor) -> torch.Tensor:
    """qplanes int32 [planes, K/32, N] -> signs int8 [planes, K, N] with values -1/+1."""
    if qplanes.dim() != 3 or qplanes.dtype != torch.int32:
        raise ValueError(f"unpack_planes: qplanes must be int32 [planes, K/32, N], got {qplanes.dtype} "
                         f"{tuple(qplanes.shape)}")
    planes, words, n = qplanes.shape
    shifts = torch.arange(32, dtype=torch.int64, device=qplanes.device).view(1, 1, 32, 1)
    bits = (qplanes.to(torch.int64).unsqueeze(2) >> shifts) & 1
    return (bits * 2 - 1).to(torch.int8).reshape(planes, words * 32, n)


def dequantize(qplanes: torch.Tensor, alpha: torch.Tensor, offset: torch.Tensor, g_idx: Optional[torch.Tensor],
               group_size: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """W^T as a dense [K, N] tensor: sum_i alpha[g, i, n] * s_i[k, n] + offset[g, n], computed in `dtype`."""
    dtype = dtype or alpha.dtype
    signs = unpack_planes(qplanes).to(dtype)  # [planes, K, N]
    k = signs.shape[1]
    g = (default_g_idx(k, group_size, device=signs.device) if g_idx is None else g_idx).long()
    alpha_k = alpha.to(dtype)[g].permute(1, 0, 2)  # [planes, K, N]
    return (alpha_k * signs).sum(dim=0) + offset.to(dtype)[g]


def gemm(x: torch.Tensor, qplanes: torch.Tensor, alpha: torch.Tensor, offset: torch.Tensor,
         g_idx: Optional[torch.Tensor], bias: Optional[torch.Tensor], group_size: int,
         compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """y = x @ W^T + bias in `compute_dtype` (default: x's dtype), returned in x's dtype."""
    compute_dtype = compute_dtype or x.dtype
    w = dequantize(qplanes, alpha, offset, g_idx, group_size, dtype=compute_dtype)
    y = x.to(compute_dtype) @ w
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return y.to(x.dtype)
