"""transformers integration: ``AutoModelForCausalLM.from_pretrained`` on a GPTQ checkpoint, with our layers.

After ``gptq_kernels.patch_transformers()``, transformers hands checkpoints whose ``quantization_config`` says
``quant_method: "gptq"`` (or ``"gptqt"``) to the quantizer below instead of its own GPTQ integration (which
needs optimum and GPTQModel). The quantizer reads the safetensors headers of the checkpoint being loaded,
puts a QuantLinear (BCQLinear) wherever packed tensors are, lets transformers load every tensor as it is, and
then finishes the layers (gptq_v2 zero points, act-order sorting, layout checks). It only loads quantized
checkpoints; quantizing through ``from_pretrained`` is gptq_kernels.quantize_model's job.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

from .checkpoint import (CheckpointError, QuantizationSettings, _layer_state, _new_layer, _plan_layers,
                         _PlannedLayer, _replace_module, _TensorIndex, _model_settings)

_PATCHED: Dict[str, Any] = {}


def patch_transformers() -> None:
    """Makes transformers load GPTQ (and GPTQT) checkpoints with gptq_kernels' layers. Idempotent.

    >>> import gptq_kernels; gptq_kernels.patch_transformers()
    >>> model = AutoModelForCausalLM.from_pretrained("path/to/gptq-checkpoint")
    """
    if _PATCHED:
        return
    from transformers.quantizers import auto
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    class GptqKernelsConfig(QuantizationConfigMixin):
        """The checkpoint's quantization_config, kept as written (every key, GPTQModel's included)."""

        def __init__(self, **kwargs):
            self._config = dict(kwargs)
            self.quant_method = str(kwargs.get("quant_method", "gptq")).lower()
            for key, value in kwargs.items():
                if key != "quant_method" and not hasattr(type(self), key):
                    setattr(self, key, value)

        def to_dict(self) -> Dict[str, Any]:
            return dict(self._config)

        def get_loading_attributes(self) -> Dict[str, Any]:
            return {}

    class GptqKernelsHfQuantizer(HfQuantizer):
        requires_calibration = True  # loads quantized checkpoints only

        def __init__(self, quantization_config, **kwargs):
            super().__init__(quantization_config, **kwargs)
            self.settings = QuantizationSettings.from_dict(quantization_config.to_dict())
            self.planned: List[_PlannedLayer] = []

        def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
            if not checkpoint_files:
                raise CheckpointError("gptq_kernels: from_pretrained gave the quantizer no checkpoint files")
            files = [f for f in checkpoint_files if f.endswith(".safetensors")]
            if len(files) != len(checkpoint_files):
                raise CheckpointError("gptq_kernels loads safetensors checkpoints only, got "
                                      f"{[os.path.basename(f) for f in checkpoint_files]}")
            folder = os.path.dirname(files[0])
            index = _TensorIndex(folder, [os.path.basename(f) for f in files])
            self.planned = _plan_layers(model, self.settings, index)
            for plan in self.planned:
                _replace_module(model, plan.name, _new_layer(plan, self.settings.quant_method, device="meta"))
            return model

        def _process_model_after_weight_loading(self, model, **kwargs):
            for plan in self.planned:
                layer = model.get_submodule(plan.name)
                # A checkpoint without g_idx (older ones, no act-order) leaves it unloaded: the default applies.
                state = {k: v for k, v in layer.state_dict().items() if not (k == "g_idx" and v.is_meta)}
                if any(t.is_meta for t in state.values()):
                    missing = next(k for k, t in state.items() if t.is_meta)
                    raise CheckpointError(f"{plan.name}.{missing} is missing from the checkpoint")
                tensors = {f"{plan.name}.{k}": v for k, v in state.items()}
                fresh = _new_layer(plan, self.settings.quant_method, device=next(iter(state.values())).device)
                fresh.load_state_dict(_layer_state(plan, self.settings, tensors))  # checks, v2 zeros, act-order
                _replace_module(model, plan.name, fresh)
            model.gptq_kernels_config = _model_settings(self.settings)
            return model

        def is_serializable(self, *args, **kwargs):
            return True

        @property
        def is_trainable(self) -> bool:
            return False

    for method in ("gptq", "gptqt"):
        _PATCHED[method] = (auto.AUTO_QUANTIZER_MAPPING.get(method), auto.AUTO_QUANTIZATION_CONFIG_MAPPING.get(method))
        auto.AUTO_QUANTIZER_MAPPING[method] = GptqKernelsHfQuantizer
        auto.AUTO_QUANTIZATION_CONFIG_MAPPING[method] = GptqKernelsConfig


def unpatch_transformers() -> None:
    """Restores transformers' own handling of GPTQ checkpoints."""
    if not _PATCHED:
        return
    from transformers.quantizers import auto

    for method, (quantizer, config) in _PATCHED.items():
        for mapping, value in ((auto.AUTO_QUANTIZER_MAPPING, quantizer), (auto.AUTO_QUANTIZATION_CONFIG_MAPPING, config)):
            if value is None:
                mapping.pop(method, None)
            else:
                mapping[method] = value
    _PATCHED.clear()
