"""The GPTQ checkpoint layout (AutoGPTQ / GPTQModel / transformers ``quant_method: "gptq"``, format "gptq").

For a linear layer with weight ``W`` of shape ``[N, K]`` (out_features, in_features), quantized to ``bits``
with ``G = ceil(K / group_size)`` groups (``group_size = -1``: one group, ``G = 1``):

=========  =====================  ========================================================================
tensor     shape / dtype          meaning
=========  =====================  ========================================================================
qweight    [K*bits/32, N] int32   q[k, n] packed along K as a little-endian bit stream (32 values = bits words)
qzeros     [G, N*bits/32] int32   zero[g, n] - 1, packed the same way along N
scales     [G, N] float16         scale[g, n]
g_idx      [K] int32              the group of input channel k (k // group_size unless act-order)
bias       [N] float16            optional
=========  =====================  ========================================================================

and ``W[n, k] = scales[g, n] * (q[k, n] - zero[g, n])`` with ``g = g_idx[k]``. Storing zero-1 is the
ecosystem's historical ("v1") convention; GPTQModel's "gptq_v2" stores the zero itself. A zero point of 0
is stored as GPTQModel stores it (see reference.zeros_from_checkpoint): at 2, 4 and 8 bits the ones are
subtracted from whole words, so it borrows from the next field; at 3 bits it wraps to 7.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")


def check_group_size(group_size: int) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or not (group_size == -1 or group_size > 0):
        raise ValueError(f"group_size must be -1 (one group per output channel) or a positive int, got {group_size!r}")


def check_features(in_features: int, out_features: int) -> None:
    if in_features <= 0 or in_features % 32:
        raise ValueError(f"in_features must be a positive multiple of 32 for GPTQ packing, got {in_features}")
    if out_features <= 0 or out_features % 32:
        raise ValueError(f"out_features must be a positive multiple of 32 for GPTQ packing, got {out_features}")


def num_groups(in_features: int, group_size: int) -> int:
    return 1 if group_size == -1 else -(-in_features // group_size)


def default_g_idx(in_features: int, group_size: int, device=None) -> torch.Tensor:
    """g_idx without act-order: input channel k belongs to group k // group_size."""
    k = torch.arange(in_features, dtype=torch.int32, device=device)
    return torch.zeros_like(k) if group_size == -1 else k // group_size


def tensor_shapes(in_features: int, out_features: int, bits: int, group_size: int) -> Dict[str, Tuple[int, ...]]:
    groups = num_groups(in_features, group_size)
    return {
        "qweight": (in_features * bits // 32, out_features),
        "qzeros": (groups, out_features * bits // 32),
        "scales": (groups, out_features),
        "g_idx": (in_features,),
        "bias": (out_features,),
    }


def check_layer_tensors(
    tensors: Dict[str, Optional[torch.Tensor]],
    in_features: int,
    out_features: int,
    bits: int,
    group_size: int,
    name: str = "layer",
    required: Tuple[str, ...] = ("qweight", "qzeros", "scales"),
) -> None:
    """Raises ValueError naming the first tensor whose presence, shape or dtype does not fit the layout."""
    shapes = tensor_shapes(in_features, out_features, bits, group_size)
    expected_dtypes = {"qweight": (torch.int32,), "qzeros": (torch.int32,), "g_idx": (torch.int32,),
                       "scales": FLOAT_DTYPES, "bias": FLOAT_DTYPES}
    for key, shape in shapes.items():
        t = tensors.get(key)
        if t is None:
            if key not in required:
                continue
            raise ValueError(f"{name}.{key} is missing")
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{name}.{key} has shape {tuple(t.shape)}, expected {shape} for in_features={in_features}, "
                f"out_features={out_features}, bits={bits}, group_size={group_size}"
            )
        if t.dtype not in expected_dtypes[key]:
            allowed = " or ".join(str(d).replace("torch.", "") for d in expected_dtypes[key])
            raise ValueError(f"{name}.{key} has dtype {str(t.dtype).replace('torch.', '')}, expected {allowed}")
