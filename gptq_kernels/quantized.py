"""QuantizedWeight: one layer's quantized weight in the GPTQ layout, and round-to-nearest quantization."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from . import ops, reference
from .format import check_bits, check_features, check_group_size, default_g_idx, num_groups
from .grid import fit_grid, quantize_to_grid


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """reference.pack_rows, by the compiled kernel where the values' device has one."""
    if ops.has_kernel(values.device.type, "pack"):
        return ops.pack(values, bits)
    return reference.pack_rows(values, bits)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """reference.unpack_rows, by the compiled kernel where the device has one."""
    if ops.has_kernel(packed.device.type, "unpack"):
        return ops.unpack(packed, bits)
    return reference.unpack_rows(packed, bits)


def permute_rows(packed: torch.Tensor, perm: torch.Tensor, bits: int) -> torch.Tensor:
    """reference.permute_rows, by the compiled kernel where the device has one (no unpacked copy)."""
    if ops.has_kernel(packed.device.type, "permute_rows"):
        return ops.permute_rows(packed, perm, bits)
    return reference.permute_rows(packed, perm, bits)


@dataclass
class QuantizedWeight:
    """Packed tensors of one linear layer (see gptq_kernels.format for the layout)."""

    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    group_size: int
    sym: bool = True

    @property
    def in_features(self) -> int:
        return self.g_idx.numel()

    @property
    def out_features(self) -> int:
        return self.scales.shape[1]

    @classmethod
    def from_integers(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor,
                      bits: int, group_size: int, sym: bool = True,
                      scale_dtype: torch.dtype = torch.float16) -> "QuantizedWeight":
        """Packs integers q [N, K], per-group scale and zero [N, G] and g_idx [K] into the GPTQ layout."""
        return cls(
            qweight=pack_rows(q.t().to(torch.int32).contiguous(), bits),
            qzeros=reference.pack_zeros(zero.t().round().to(torch.int32), bits),
            scales=scale.t().to(scale_dtype).contiguous(),
            g_idx=g_idx.to(torch.int32).contiguous(),
            bits=bits, group_size=group_size, sym=sym,
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [N, K] (nn.Linear convention) these tensors encode."""
        # scale * (q - zero) is exact in float32 (a 16-bit float scale times an integer below 256), so every
        # narrower dtype gets it rounded once; float64 is computed in float64.
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        if compute == torch.float32 and ops.has_kernel(self.qweight.device.type, "dequantize"):
            # The op computes in float32 and rounds once to its scales' dtype: float32 scales unless that is dtype.
            scales = self.scales if dtype == self.scales.dtype else self.scales.float()
            w = ops.dequantize(self.qweight, self.qzeros, scales, self.g_idx, self.bits, self.group_size)
        else:
            w = reference.dequantize(self.qweight, self.qzeros, self.scales, self.g_idx, self.bits,
                                     self.group_size, dtype=compute)
        return w.to(dtype).t()

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The checkpoint tensors, named as in a GPTQ state dict."""
        return {"qweight": self.qweight, "qzeros": self.qzeros, "scales": self.scales, "g_idx": self.g_idx}

    def to_quant_linear(self, bias: Optional[torch.Tensor] = None, dtype: Optional[torch.dtype] = None):
        from .nn import QuantLinear

        return QuantLinear.from_quantized(self, bias=bias, dtype=dtype)


def quantize_rtn(weight: torch.Tensor, bits: int = 4, group_size: int = 128, sym: bool = True,
                 scale_dtype: torch.dtype = torch.float16) -> QuantizedWeight:
    """Round-to-nearest quantization of a weight [N, K], one grid per (output channel, group of K)."""
    check_bits(bits)
    check_group_size(group_size)
    out_features, in_features = weight.shape
    check_features(in_features, out_features)
    groups = num_groups(in_features, group_size)
    width = in_features if group_size == -1 else group_size
    q = torch.empty(out_features, in_features, dtype=torch.int32, device=weight.device)
    scale = torch.empty(out_features, groups, device=weight.device)
    zero = torch.empty(out_features, groups, device=weight.device)
    for g in range(groups):
        cols = slice(g * width, min((g + 1) * width, in_features))
        s, z = fit_grid(weight[:, cols], bits, sym, scale_dtype)
        q[:, cols] = quantize_to_grid(weight[:, cols], s, z, bits).to(torch.int32)
        scale[:, g], zero[:, g] = s, z
    return QuantizedWeight.from_integers(q, scale, zero, default_g_idx(in_features, group_size, weight.device),
                                         bits, group_size, sym, scale_dtype)
