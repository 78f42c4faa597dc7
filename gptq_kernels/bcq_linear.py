"""BCQLinear: a drop-in replacement for nn.Linear whose weight is binary-coded (GPTQT's inference format)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from . import bcq_format
from .format import FLOAT_DTYPES, check_features, check_group_size, default_g_idx


class BCQLinear(nn.Module):
    """y = x @ W^T + bias with W[n, k] = sum_i alpha[g, i, n] * s_i[k, n] + offset[g, n], s_i in {-1, +1}.

    The buffers ``qplanes``, ``alpha``, ``offset``, ``g_idx`` and ``bias`` follow gptq_kernels.bcq_format, so
    ``load_state_dict`` takes a checkpoint's tensors as they are. ``dtype`` is the dtype of ``alpha``,
    ``offset`` and ``bias``; activations may be float16, bfloat16 or float32 and the output has their dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, planes: int = 3,
                 group_size: int = 128, dtype: torch.dtype = torch.float16, device=None):
        super().__init__()
        bcq_format.check_planes(planes)
        check_group_size(group_size)
        check_features(in_features, out_features)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES} (the dtype of alpha, offset and bias), got {dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.planes, self.group_size = planes, group_size
        shapes = bcq_format.bcq_tensor_shapes(in_features, out_features, planes, group_size)
        self.register_buffer("qplanes", torch.zeros(shapes["qplanes"], dtype=torch.int32, device=device))
        self.register_buffer("alpha", torch.zeros(shapes["alpha"], dtype=dtype, device=device))
        self.register_buffer("offset", torch.zeros(shapes["offset"], dtype=dtype, device=device))
        self.register_buffer("g_idx", default_g_idx(in_features, group_size, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_tensors(cls, tensors: Dict[str, torch.Tensor], group_size: int, bias: Optional[torch.Tensor] = None,
                     dtype: Optional[torch.dtype] = None) -> "BCQLinear":
        """A layer holding `tensors` (qplanes, alpha, offset and optionally g_idx), cast to `dtype`."""
        planes, words, out_features = tensors["qplanes"].shape
        dtype = dtype or tensors["alpha"].dtype
        layer = cls(words * 32, out_features, bias=bias is not None, planes=planes, group_size=group_size,
                    dtype=dtype, device=tensors["qplanes"].device)
        state = {k: v for k, v in tensors.items() if k in ("qplanes", "alpha", "offset", "g_idx")}
        state["alpha"], state["offset"] = state["alpha"].to(dtype), state["offset"].to(dtype)
        if bias is not None:
            state["bias"] = bias.detach().to(dtype)
        layer.load_state_dict(state, strict=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[-1]} features in its last dimension, "
                             f"expected in_features={self.in_features}")
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return bcq_format.gemm(x, self.qplanes, self.alpha, self.offset, self.g_idx, self.bias, self.group_size,
                               compute_dtype=compute)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The float weight [out_features, in_features] this layer multiplies by (a new tensor; not cached)."""
        return bcq_format.dequantize(self.qplanes, self.alpha, self.offset, self.g_idx, self.group_size,
                                     dtype=dtype or self.alpha.dtype).t()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"planes={self.planes}, group_size={self.group_size}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        tensors = {key: state_dict.get(prefix + key) for key in ("qplanes", "alpha", "offset", "g_idx", "bias")}
        present = {k: v for k, v in tensors.items() if v is not None}
        bcq_format.check_bcq_tensors(present, self.in_features, self.out_features, self.planes, self.group_size,
                                     name=prefix.rstrip(".") or type(self).__name__, required=())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
