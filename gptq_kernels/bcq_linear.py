"""BCQLinear: a drop-in replacement for nn.Linear whose weight is binary-coded (GPTQT's inference format)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from . import bcq_format, ops
from .format import FLOAT_DTYPES, check_features, check_group_size, default_g_idx

# Device types with a compiled bcq_gemm kernel, fixed at import so forward() stays free of dispatcher queries.
_KERNEL_DEVICE_TYPES = frozenset(t for t in ("cpu", "cuda") if ops.has_kernel(t, "bcq_gemm"))


def permute_input_channels(qplanes: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """qplanes whose input channel k' holds the signs of input channel perm[k'] of `qplanes` (a new tensor).

    Works on packed words, 32 bit positions at a time, so the temporaries stay the size of qplanes (unpacking
    every sign of a large layer to int64 would take gigabytes)."""
    planes, words, n = qplanes.shape
    perm = perm.to(device=qplanes.device, dtype=torch.int64)
    out = torch.zeros(planes, words, n, dtype=torch.int64, device=qplanes.device)
    for j in range(32):
        src = perm[j::32]  # the source channel of bit j of every new word
        bit = (qplanes[:, src // 32, :].to(torch.int64) >> (src % 32).view(1, -1, 1)) & 1
        out |= bit << j
    return torch.where(out >= (1 << 31), out - (1 << 32), out).to(torch.int32)


class BCQLinear(nn.Module):
    """y = x @ W^T + bias with W[n, k] = sum_i alpha[g, i, n] * s_i[k, n] + offset[g, n], s_i in {-1, +1}.

    The buffers ``qplanes``, ``alpha``, ``offset``, ``g_idx`` and ``bias`` follow gptq_kernels.bcq_format, so
    ``load_state_dict`` takes a checkpoint's tensors as they are. ``dtype`` is the dtype of ``alpha``,
    ``offset`` and ``bias``; activations may be float16, bfloat16 or float32 and the output has their dtype.

    Where the compiled extension has a ``bcq_gemm`` kernel for the input's device, forward runs it (lookup
    tables for small batches, dequantize + GEMM for large ones); elsewhere it runs the bcq_format reference.
    Act-order layers (a ``g_idx`` that is not ``k // group_size``) are stored with their input channels sorted
    by group, as QuantLinear does: the sign bits of ``qplanes`` are permuted along K once at load, the input is
    gathered once per call, and ``state_dict()`` returns the checkpoint order.
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
        # Set by _sort_input_channels for act-order layers: x's columns are gathered in this order.
        self.register_buffer("input_perm", None, persistent=False)
        # True when the (sorted) g_idx still differs from k // group_size, which the kernel cannot express: such
        # layers (unequal groups) run the reference.
        self._g_idx_needed = False

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
        if self.input_perm is not None:
            x = x.index_select(-1, self.input_perm)
        if x.device.type in _KERNEL_DEVICE_TYPES:
            if not self._g_idx_needed:
                return ops.bcq_gemm(x, self.qplanes, self.alpha, self.offset, self.bias, self.group_size)
        elif not torch.compiler.is_compiling():  # a warning would break torch.compile's graph
            ops.warn_reference_path(type(self).__name__, x.device.type)
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return bcq_format.gemm(x, self.qplanes, self.alpha, self.offset, self.g_idx, self.bias, self.group_size,
                               compute_dtype=compute)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The float weight [out_features, in_features] this layer multiplies by (a new tensor; not cached)."""
        qplanes, g_idx = self._checkpoint_order()
        return bcq_format.dequantize(qplanes, self.alpha, self.offset, g_idx, self.group_size,
                                     dtype=dtype or self.alpha.dtype).t()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"planes={self.planes}, group_size={self.group_size}, act_order={self.input_perm is not None}")

    # ------------------------------------------------------------------ act-order: kernel vs checkpoint order
    def _sort_input_channels(self) -> None:
        """Reorders an act-order layer's input channels by group (once, after its tensors are set)."""
        self.input_perm = None
        default = default_g_idx(self.in_features, self.group_size, self.g_idx.device)
        self._g_idx_needed = not torch.equal(self.g_idx, default)
        if not self._g_idx_needed or bool((self.g_idx[1:] >= self.g_idx[:-1]).all()):
            return
        perm = torch.argsort(self.g_idx, stable=True)
        self.qplanes = permute_input_channels(self.qplanes, perm)
        self.g_idx = self.g_idx[perm].contiguous()
        self.input_perm = perm
        self._g_idx_needed = not torch.equal(self.g_idx, default)

    def _checkpoint_order(self):
        """(qplanes, g_idx) in the checkpoint's input-channel order."""
        if self.input_perm is None:
            return self.qplanes, self.g_idx
        inverse = torch.argsort(self.input_perm)
        g_idx = torch.empty_like(self.g_idx)
        g_idx[self.input_perm] = self.g_idx
        return permute_input_channels(self.qplanes, inverse), g_idx

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.input_perm is not None:
            destination[prefix + "qplanes"], destination[prefix + "g_idx"] = self._checkpoint_order()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        tensors = {key: state_dict.get(prefix + key) for key in ("qplanes", "alpha", "offset", "g_idx", "bias")}
        present = {k: v for k, v in tensors.items() if v is not None}
        bcq_format.check_bcq_tensors(present, self.in_features, self.out_features, self.planes, self.group_size,
                                     name=prefix.rstrip(".") or type(self).__name__, required=())
        if self.input_perm is not None:  # back to checkpoint order, so that a partial load stays consistent
            self.qplanes, self.g_idx = self._checkpoint_order()
            self.input_perm = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._sort_input_channels()
