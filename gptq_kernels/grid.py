"""The uniform quantization grid of one group: a scale and a zero point per output channel.

Follows the GPTQ paper's quantizer: the range always contains 0; symmetric grids are centred on
zero = (2^bits)/2, asymmetric ones span [min, max]. Scales are rounded to the storage dtype (float16)
before use, so the integers are exactly those the checkpoint's scales reproduce.
"""
from __future__ import annotations

from typing import Tuple

import torch


def fit_grid(w: torch.Tensor, bits: int, sym: bool, scale_dtype: torch.dtype = torch.float16
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero (both float, shape [rows]) of each row of w [rows, cols]."""
    maxq = (1 << bits) - 1
    w = w.float()
    zero_t = torch.zeros(w.shape[0], device=w.device)
    xmin = torch.minimum(w.min(dim=1).values, zero_t)
    xmax = torch.maximum(w.max(dim=1).values, zero_t)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)

    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
        # The GPTQ layout stores zero-1, so zero 0 (a group with no negative weight) is not storable:
        # move such grids up by one step instead.
        lifted = zero < 1
        scale = torch.where(lifted, xmax / (maxq - 1), scale)
        zero = torch.where(lifted, torch.ones_like(zero), zero)
    tiny = torch.finfo(scale_dtype).tiny
    scale = scale.clamp_min(tiny).to(scale_dtype).float()
    return scale, zero


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers q = clamp(round(w / scale) + zero, 0, 2^bits - 1), w [rows, cols], scale/zero [rows]."""
    maxq = (1 << bits) - 1
    return torch.clamp(torch.round(w.float() / scale[:, None]) + zero[:, None], 0, maxq)


def dequantize_from_grid(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale[:, None] * (q - zero[:, None])
