"""Saving and loading quantized models: safetensors weights plus a transformers config.json.

The checkpoint is the ecosystem's GPTQ format (``quant_method: "gptq"``, ``checkpoint_format: "gptq"``):
QuantLinear's buffers are named as GPTQ state dicts name them, and config.json carries a
``quantization_config``. Files are written to temporary names first and renamed, so an interrupted save
never leaves a half-written checkpoint under the final names.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch
from torch import nn

from .nn import QuantLinear

WEIGHTS_NAME = "model.safetensors"


def quantization_config(model: nn.Module) -> Dict:
    settings = getattr(model, "gptq_kernels_config", None)
    if settings is None:
        raise ValueError("the model has not been quantized by gptq_kernels.quantize_model (no gptq_kernels_config)")
    return {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": settings["bits"],
            "group_size": settings["group_size"], "desc_act": settings["desc_act"], "sym": settings["sym"],
            "static_groups": settings["static_groups"], "damp_percent": settings["damp_percent"],
            "true_sequential": settings["true_sequential"]}


def _unique_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict without the second name of tied tensors (lm_head tied to the embeddings)."""
    seen, state = set(), {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        state[name] = tensor.detach().cpu().contiguous()
    return state


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors as a checkpoint stores them (tied tensors counted once)."""
    return sum(t.numel() * t.element_size() for t in _unique_state_dict(model).values())


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights of the decoder's linear layers (packed ones with their scales, zeros and g_idx)."""
    from .driver import find_decoder_layers, is_linear

    _, layers = find_decoder_layers(model)
    total = 0
    for module in layers.modules():
        if isinstance(module, QuantLinear):
            total += sum(t.numel() * t.element_size() for t in (module.qweight, module.qzeros, module.scales,
                                                                 module.g_idx))
        elif is_linear(module):
            total += module.weight.numel() * module.weight.element_size()
    return total


def save_quantized(model: nn.Module, out_dir: str, tokenizer=None) -> None:
    """Writes model.safetensors, config.json (with quantization_config) and the tokenizer to out_dir."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    config = model.config.to_dict()
    config["quantization_config"] = quantization_config(model)
    weights = os.path.join(out_dir, WEIGHTS_NAME)
    save_file(_unique_state_dict(model), weights + ".tmp", metadata={"format": "pt"})
    os.replace(weights + ".tmp", weights)
    config_path = os.path.join(out_dir, "config.json")
    with open(config_path + ".tmp", "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(config_path + ".tmp", config_path)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def is_quantized_checkpoint(path: str) -> bool:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return False
    with open(config_path) as f:
        return json.load(f).get("quantization_config", {}).get("quant_method") == "gptq"


def load_quantized(path: str, device: Optional[str] = None) -> nn.Module:
    """A transformers model with QuantLinear layers from a checkpoint written by save_quantized."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    qconfig = config.quantization_config
    if not isinstance(qconfig, dict):
        qconfig = qconfig.to_dict()
    if qconfig.get("checkpoint_format", "gptq") != "gptq":
        raise ValueError(f"{path}: checkpoint_format {qconfig.get('checkpoint_format')!r} is not supported "
                         "(only 'gptq')")
    del config.quantization_config  # the model is built here, not by a transformers quantizer
    model = AutoModelForCausalLM.from_config(config)
    state = load_file(os.path.join(path, WEIGHTS_NAME))
    for key in [k for k in state if k.endswith(".qweight")]:
        name = key[: -len(".qweight")]
        scales = state[name + ".scales"]
        layer = QuantLinear(state[name + ".g_idx"].numel(), scales.shape[1], bias=(name + ".bias") in state,
                            bits=qconfig["bits"], group_size=qconfig["group_size"], dtype=scales.dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit the model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    model.gptq_kernels_config = dict(qconfig, method="gptq")
    model.eval()
    return model.to(device) if device is not None else model
