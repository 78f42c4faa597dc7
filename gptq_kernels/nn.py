"""QuantLinear: a drop-in replacement for nn.Linear whose weight is stored in the GPTQ layout."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from . import ops, reference
from .format import (FLOAT_DTYPES, check_bits, check_features, check_group_size, check_layer_tensors,
                     default_g_idx, tensor_shapes)
from .quantized import QuantizedWeight, permute_rows, quantize_rtn

# Device types with a compiled gemm kernel, fixed at import so forward() stays free of dispatcher queries.
_KERNEL_DEVICE_TYPES = frozenset(t for t in ("cpu", "cuda") if ops.has_kernel(t))


class QuantLinear(nn.Module):
    """y = x @ W^T + bias with W held as packed 2/3/4/8-bit integers plus per-group scales and zeros.

    The buffers ``qweight``, ``qzeros``, ``scales``, ``g_idx`` and ``bias`` are named and shaped as in GPTQ
    checkpoints, so ``load_state_dict`` takes a checkpoint's tensors as they are. ``dtype`` is the dtype of
    ``scales`` and ``bias``; activations may be float16, bfloat16 or float32 and the output has their dtype.

    Act-order layers (a ``g_idx`` that is not sorted) are stored internally with their input channels sorted
    by group, so the kernels never look a group up per element; ``state_dict()`` still returns the checkpoint
    order, and nothing beyond the packed weight and a [K] permutation is kept.

    On a device type listed in ``FRAGMENT_ORDER_DEVICE_TYPES`` (CUDA), 2- and 4-bit layers also hold ``qweight``
    in fragment order (``gptq_kernels.ops.to_fragment_order``), the layout the CUDA kernels read fastest. The
    conversion happens once, when tensors are loaded or the layer is moved, in place of the old copy;
    ``state_dict()``, ``quantized_weight()`` and moves to other devices return to the checkpoint order.
    """

    # Device types on which 2- and 4-bit layers keep qweight in fragment order (where its gemm is fastest).
    FRAGMENT_ORDER_DEVICE_TYPES = ("cuda",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 4,
                 group_size: int = 128, dtype: torch.dtype = torch.float16, device=None):
        super().__init__()
        check_bits(bits)
        check_group_size(group_size)
        check_features(in_features, out_features)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES} (the dtype of scales and bias), got {dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        shapes = tensor_shapes(in_features, out_features, bits, group_size)
        self.register_buffer("qweight", torch.zeros(shapes["qweight"], dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.zeros(shapes["qzeros"], dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(shapes["scales"], dtype=dtype, device=device))
        self.register_buffer("g_idx", default_g_idx(in_features, group_size, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        # Set by _sort_input_channels for act-order layers: x's columns are gathered in this order.
        self.register_buffer("input_perm", None, persistent=False)
        self._kernel_g_idx_needed = False
        self._fragment_ordered = False  # qweight in fragment order (see _arrange_for_device)

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_quantized(cls, quantized: QuantizedWeight, bias: Optional[torch.Tensor] = None,
                       dtype: Optional[torch.dtype] = None) -> "QuantLinear":
        """A layer holding `quantized`'s tensors (scales and bias cast to `dtype`, default the scales' dtype)."""
        dtype = dtype or quantized.scales.dtype
        layer = cls(quantized.in_features, quantized.out_features, bias=bias is not None, bits=quantized.bits,
                    group_size=quantized.group_size, dtype=dtype, device=quantized.qweight.device)
        state = dict(quantized.tensors())
        if bias is not None:
            state["bias"] = bias.detach()
        layer.load_state_dict(state)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int = 128, sym: bool = True,
                    dtype: torch.dtype = torch.float16) -> "QuantLinear":
        """Round-to-nearest quantization of an nn.Linear (use gptq_kernels.quantize_weight for GPTQ)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear expects an nn.Linear, got {type(linear).__name__}")
        quantized = quantize_rtn(linear.weight.detach().float(), bits=bits, group_size=group_size, sym=sym,
                                 scale_dtype=dtype)
        return cls.from_quantized(quantized, bias=linear.bias, dtype=dtype)

    # -------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[-1]} features in its last dimension, "
                             f"expected in_features={self.in_features}")
        if self.input_perm is not None:
            x = x.index_select(-1, self.input_perm)
        g_idx = self.g_idx if self._kernel_g_idx_needed else None
        if self._fragment_ordered:
            return ops.gemm_fragment_ordered(x, self.qweight, self.qzeros, self.scales, g_idx, self.bias, self.bits,
                                             self.group_size)
        if x.device.type in _KERNEL_DEVICE_TYPES:
            return ops.gemm(x, self.qweight, self.qzeros, self.scales, g_idx, self.bias, self.bits,
                            self.group_size)
        if not torch.compiler.is_compiling():  # a warning would break torch.compile's graph
            ops.warn_reference_path(type(self).__name__, x.device.type)
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return reference.gemm(x, self.qweight, self.qzeros, self.scales, g_idx, self.bias, self.bits,
                              self.group_size, compute_dtype=compute)

    # ------------------------------------------------------------------------------------ views of weight
    def quantized_weight(self) -> QuantizedWeight:
        """The layer's tensors in checkpoint order (act-order undone)."""
        qweight, g_idx = self._checkpoint_order()
        return QuantizedWeight(qweight, self.qzeros, self.scales, g_idx, self.bits, self.group_size)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The float weight [out_features, in_features] this layer multiplies by (a new tensor; not cached)."""
        return self.quantized_weight().dequantize(dtype or self.scales.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={self.bits}, group_size={self.group_size}, act_order={self.input_perm is not None}")

    # ------------------------------------------------------------------ act-order: kernel vs checkpoint order
    def _sort_input_channels(self) -> None:
        """Reorders an act-order layer's input channels by group (once, after its tensors are set)."""
        self.input_perm = None
        g_idx = self.g_idx
        self._kernel_g_idx_needed = not torch.equal(g_idx, default_g_idx(self.in_features, self.group_size,
                                                                          g_idx.device))
        if not self._kernel_g_idx_needed or bool((g_idx[1:] >= g_idx[:-1]).all()):
            return
        perm = torch.argsort(g_idx, stable=True)
        self.qweight = permute_rows(self.qweight, perm, self.bits)
        self.g_idx = g_idx[perm].contiguous()
        self.input_perm = perm
        self._kernel_g_idx_needed = not torch.equal(self.g_idx, default_g_idx(self.in_features, self.group_size,
                                                                               g_idx.device))

    # ----------------------------------------------------------------------- fragment order on CUDA devices
    def _arrange_for_device(self) -> None:
        """Puts qweight in fragment order where this layer's device type wants it, and back where not."""
        device_type = self.qweight.device.type
        wanted = (ops.has_fragment_order(self.bits) and device_type in self.FRAGMENT_ORDER_DEVICE_TYPES
                  and ops.has_kernel(device_type, "gemm_fragment_ordered"))
        if wanted != self._fragment_ordered:
            convert = ops.to_fragment_order if wanted else ops.from_fragment_order
            self.qweight = convert(self.qweight, self.bits)
            self._fragment_ordered = wanted

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(fn, *args, **kwargs)
        self._arrange_for_device()
        return result

    def _checkpoint_order(self):
        qweight = ops.from_fragment_order(self.qweight, self.bits) if self._fragment_ordered else self.qweight
        if self.input_perm is None:
            return qweight, self.g_idx
        inverse = torch.argsort(self.input_perm)
        return permute_rows(qweight, inverse, self.bits), self.g_idx[inverse]

    def _save_to_state_dict(self, destination: Dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.input_perm is not None or self._fragment_ordered:
            destination[prefix + "qweight"], destination[prefix + "g_idx"] = self._checkpoint_order()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        tensors = {key: state_dict.get(prefix + key) for key in ("qweight", "qzeros", "scales", "g_idx", "bias")}
        present = {k: v for k, v in tensors.items() if v is not None}
        # Missing and unexpected keys are reported by the default loader; shapes and dtypes are checked here,
        # before anything is copied, with messages that name the layout.
        check_layer_tensors(present, self.in_features, self.out_features, self.bits, self.group_size,
                            name=prefix.rstrip(".") or type(self).__name__, required=())
        reorders = "qweight" in present or "g_idx" in present
        if reorders and (self.input_perm is not None or self._fragment_ordered):
            # back to checkpoint order, so old and new tensors agree
            self.qweight, self.g_idx = self._checkpoint_order()
            self.input_perm = None
            self._fragment_ordered = False
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if reorders:  # a load that touches neither (e.g. a parent's partial load) keeps the current order
            self._sort_input_channels()
            self._arrange_for_device()

