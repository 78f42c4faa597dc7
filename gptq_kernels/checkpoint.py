"""Saving and loading quantized models in the ecosystem's GPTQ checkpoint format.

A checkpoint is a directory as AutoGPTQ, GPTQModel and transformers write it:

- ``config.json``: the transformers model config with a ``quantization_config`` block (``quant_method:
  "gptq"``, ``checkpoint_format: "gptq"`` or ``"gptq_v2"``, ``bits``, ``group_size``, ``desc_act``, ``sym``,
  optional per-module ``dynamic`` overrides, ``lm_head``, and a ``meta`` block naming the tool);
- ``quantize_config.json``: the same settings, the file AutoGPTQ reads (and the only one older AutoGPTQ
  checkpoints have);
- ``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``
  (older AutoGPTQ checkpoints name their single file in ``model_file_base_name``), holding every quantized
  linear layer as ``<name>.qweight/.qzeros/.scales/.g_idx[/.bias]`` (gptq_kernels.format) and every other
  tensor as it was.

Binary-coded GPTQT layers (``quant_method: "gptqt"``, gptq_kernels.bcq_format) use the same files with
``<name>.qplanes/.alpha/.offset/.g_idx[/.bias]``.

Loading builds the model from its config without allocating float weights for the quantized layers, puts a
QuantLinear (or BCQLinear) wherever the checkpoint has packed tensors, checks every tensor against the layout
before anything is copied, and returns nothing unless every tensor of the model was found.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from . import reference
from .format import FLOAT_DTYPES, SUPPORTED_BITS
from .nn import QuantLinear

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
QUANTIZE_CONFIG_NAME = "quantize_config.json"
DEFAULT_MAX_SHARD_SIZE = "4GB"

#: quant_method -> (the tensor that marks a quantized layer, checkpoint formats understood)
_METHODS = {"gptq": ("qweight", ("gptq", "gptq_v2")), "gptqt": ("qplanes", ("bcq",))}
_LAYER_TENSORS = {"gptq": ("qweight", "qzeros", "scales", "g_idx", "bias"),
                  "gptqt": ("qplanes", "alpha", "offset", "g_idx", "bias")}


class CheckpointError(ValueError):
    """A checkpoint does not fit its config or the model it describes; the message names the tensor."""


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class LayerSettings:
    """How one linear layer is quantized."""
    bits: int
    group_size: int
    sym: bool
    desc_act: bool


@dataclass
class QuantizationSettings:
    """The ``quantization_config`` of a checkpoint, with GPTQModel's per-module ``dynamic`` overrides.

    ``dynamic`` maps a regular expression over module names (matched from the start, first match wins) to the
    settings that differ for the matching modules; a key starting with ``-:`` leaves them unquantized, ``+:``
    or no prefix overrides.
    """
    quant_method: str
    checkpoint_format: str
    bits: int
    group_size: int
    sym: bool
    desc_act: bool
    lm_head: bool = False
    dynamic: Optional[Dict[str, Dict[str, Any]]] = None
    raw: Optional[Dict[str, Any]] = None

    @classmethod
    def from_dict(cls, config: Dict[str, Any], source: str = "quantization_config") -> "QuantizationSettings":
        method = str(config.get("quant_method", "gptq")).lower()
        if method not in _METHODS:
            raise CheckpointError(f"{source}: quant_method {config.get('quant_method')!r} is not supported "
                                  f"(supported: {', '.join(_METHODS)})")
        formats = _METHODS[method][1]
        fmt = str(config.get("checkpoint_format", config.get("format", formats[0]))).lower()
        if fmt not in formats:
            raise CheckpointError(f"{source}: checkpoint_format {fmt!r} is not supported for quant_method "
                                  f"{method!r} (supported: {', '.join(formats)})")
        for key in ("bits", "group_size"):
            if key not in config:
                raise CheckpointError(f"{source}: {key!r} is missing")
        dynamic = config.get("dynamic") or None
        if dynamic is not None and not isinstance(dynamic, dict):
            raise CheckpointError(f"{source}: 'dynamic' must map module-name patterns to settings, got "
                                  f"{type(dynamic).__name__}")
        settings = cls(quant_method=method, checkpoint_format=fmt, bits=int(config["bits"]),
                       group_size=int(config["group_size"]), sym=bool(config.get("sym", True)),
                       desc_act=bool(config.get("desc_act", False)), lm_head=bool(config.get("lm_head", False)),
                       dynamic=dynamic, raw=dict(config))
        if method == "gptq":
            settings.layer("", source=source)  # checks the base bits and group size
        return settings

    def layer(self, module_name: str, source: str = "quantization_config") -> Optional[LayerSettings]:
        """The settings of `module_name`, or None when ``dynamic`` leaves it unquantized."""
        overrides: Dict[str, Any] = {}
        for pattern, values in (self.dynamic or {}).items():
            negative = pattern.startswith("-:")
            regex = pattern[2:] if pattern.startswith(("-:", "+:")) else pattern
            if re.match(regex, module_name):
                if negative:
                    return None
                overrides = dict(values or {})
                break
        settings = LayerSettings(bits=int(overrides.get("bits", self.bits)),
                                 group_size=int(overrides.get("group_size", self.group_size)),
                                 sym=bool(overrides.get("sym", self.sym)),
                                 desc_act=bool(overrides.get("desc_act", self.desc_act)))
        if self.quant_method == "gptq" and settings.bits not in SUPPORTED_BITS:
            where = f" (dynamic override for {module_name})" if overrides else ""
            raise CheckpointError(f"{source}: bits={settings.bits}{where} is not supported; "
                                  f"gptq_kernels supports {SUPPORTED_BITS}")
        if not (settings.group_size == -1 or settings.group_size > 0):
            raise CheckpointError(f"{source}: group_size={settings.group_size} must be -1 or positive")
        return settings


def default_checkpoint_format(model: nn.Module) -> str:
    """"gptq" (v1) for symmetric models, which every GPTQ tool reads; "gptq_v2" for asymmetric ones, because
    GPTQModel refuses asymmetric v1 files that it did not write itself (older v1 writers mangled zero points
    of 0) and reads v2 exactly."""
    settings = getattr(model, "gptq_kernels_config", None) or {}
    return "gptq" if settings.get("sym", True) else "gptq_v2"


def quantization_config(model: nn.Module, checkpoint_format: Optional[str] = None) -> Dict[str, Any]:
    """The ``quantization_config`` block written for `model` (quantized by quantize_model or loaded here)."""
    settings = getattr(model, "gptq_kernels_config", None)
    if settings is None:
        raise ValueError("the model has not been quantized by gptq_kernels.quantize_model or loaded by "
                         "gptq_kernels.load_quantized (no gptq_kernels_config)")
    from . import __version__

    method = settings.get("method", "gptq")
    method = "gptq" if method in ("gptq", "rtn") else method
    if method == "gptq":
        checkpoint_format = checkpoint_format or default_checkpoint_format(model)
        if checkpoint_format not in ("gptq", "gptq_v2"):
            raise ValueError(f"checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    else:
        checkpoint_format = "bcq"
    config = {"quant_method": method, "checkpoint_format": checkpoint_format,
              "bits": settings["bits"], "group_size": settings["group_size"], "desc_act": settings["desc_act"],
              "sym": settings["sym"], "static_groups": settings.get("static_groups", False),
              "damp_percent": settings.get("damp_percent", 0.01),
              "true_sequential": settings.get("true_sequential", True), "lm_head": bool(settings.get("lm_head", False)),
              "pack_dtype": "int32"}
    for key, value in settings.items():  # method-specific settings (e.g. GPTQT's intermediate_bits)
        if key not in config and key not in ("method", "layers", "meta", "checkpoint_format", "quant_method"):
            config[key] = value
    config["meta"] = {"quantizer": [f"gptq_kernels:{__version__}"],
                      "quantized_by": "rtn" if settings.get("method") == "rtn" else method,
                      "damp_percent": config["damp_percent"], "true_sequential": config["true_sequential"],
                      "static_groups": config["static_groups"]}
    return config


# ---------------------------------------------------------------------------------------------- sizes
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
    from .bcq_linear import BCQLinear
    from .driver import find_decoder_layers, is_linear

    _, layers = find_decoder_layers(model)
    total = 0
    for module in layers.modules():
        if isinstance(module, (QuantLinear, BCQLinear)):
            total += sum(t.numel() * t.element_size() for name, t in module.named_buffers()
                         if name != "bias" and name in module.state_dict())
        elif is_linear(module):
            total += module.weight.numel() * module.weight.element_size()
    return total


def parse_size(size: Union[int, str]) -> int:
    """Bytes from an int or a string such as "4GB", "500MB", "2GiB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(size), re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size must be bytes or a string like '4GB' or '500MB', got {size!r}")
    unit = (match.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0]) if unit[0] in "KMGT" else 0
    return int(float(match.group(1)) * base ** power)


# --------------------------------------------------------------------------------------------- saving
def _shards(state: Dict[str, torch.Tensor], max_bytes: int) -> List[Dict[str, torch.Tensor]]:
    """Tensors in order, split into files of at most max_bytes (a larger single tensor gets its own file)."""
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def save_quantized(model: nn.Module, path: str, tokenizer=None, *,
                   max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE,
                   checkpoint_format: Optional[str] = None) -> None:
    """Writes `model` (quantized by quantize_model or loaded by load_quantized) as a GPTQ checkpoint to `path`.

    The directory gets config.json with ``quantization_config``, quantize_config.json, the weights as
    safetensors (sharded above `max_shard_size`, with an index) and the tokenizer when one is given. Everything
    is written to a temporary directory next to `path` and moved into place at the end, so an interrupted save
    leaves either the previous checkpoint or the new one, never a mix. `checkpoint_format` is "gptq" (zero
    points stored minus one) or "gptq_v2" (stored as they are); the default is default_checkpoint_format's.
    """
    from safetensors.torch import save_file

    qconfig = quantization_config(model, checkpoint_format)
    state = _unique_state_dict(model)
    if qconfig["checkpoint_format"] == "gptq_v2":  # QuantLinear holds v1 zero points: store the zeros themselves
        for name, module in model.named_modules():
            key = f"{name}.qzeros" if name else "qzeros"
            if isinstance(module, QuantLinear) and key in state:
                zeros = reference.zeros_from_checkpoint(state[key], module.bits, "gptq")
                state[key] = reference.zeros_to_checkpoint(zeros, module.bits, "gptq_v2")
    shards = _shards(state, parse_size(max_shard_size))
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        metadata = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], os.path.join(staging, WEIGHTS_NAME), metadata=metadata)
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, os.path.join(staging, name), metadata=metadata)
                for key, tensor in shard.items():
                    weight_map[key] = name
                    total += tensor.numel() * tensor.element_size()
            _write_json(os.path.join(staging, INDEX_NAME), {"metadata": {"total_size": total},
                                                             "weight_map": weight_map})
        config = model.config.to_dict()
        config["quantization_config"] = qconfig
        _write_json(os.path.join(staging, CONFIG_NAME), config)
        _write_json(os.path.join(staging, QUANTIZE_CONFIG_NAME), qconfig)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        _move_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _move_into_place(staging: str, path: str) -> None:
    """Replaces `path` by the finished directory `staging` (two renames; an old checkpoint is removed last)."""
    if not os.path.exists(path):
        os.replace(staging, path)
        return
    if not os.path.isdir(path):
        raise FileExistsError(f"{path} exists and is not a directory")
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=os.path.dirname(path))
    os.rmdir(old)
    os.replace(path, old)
    os.replace(staging, path)
    shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------------------------------------- reading
def read_quantization_settings(path: str) -> Tuple[Dict[str, Any], QuantizationSettings]:
    """(config.json as a dict, its quantization settings); quantize_config.json when config.json has none."""
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{path}: no {CONFIG_NAME}")
    with open(config_path) as f:
        config = json.load(f)
    qconfig, source = config.get("quantization_config"), f"{config_path}: quantization_config"
    if qconfig is None:
        qpath = os.path.join(path, QUANTIZE_CONFIG_NAME)
        if not os.path.isfile(qpath):
            raise CheckpointError(f"{path}: not a quantized checkpoint ({CONFIG_NAME} has no quantization_config "
                                  f"and there is no {QUANTIZE_CONFIG_NAME})")
        with open(qpath) as f:
            qconfig, source = json.load(f), qpath
    return config, QuantizationSettings.from_dict(qconfig, source=source)


def is_quantized_checkpoint(path: str) -> bool:
    try:
        read_quantization_settings(path)
        return True
    except (CheckpointError, OSError, ValueError):
        return False


class _TensorIndex:
    """Where each tensor of a checkpoint lives, with shapes and dtypes read from the safetensors headers."""

    def __init__(self, path: str, files: Iterable[str]):
        from safetensors import safe_open

        self.path, self.location, self.info = path, {}, {}
        for file in files:
            with safe_open(os.path.join(path, file), framework="pt") as f:
                for key in f.keys():
                    self.location[key] = file
                    sl = f.get_slice(key)
                    self.info[key] = (tuple(sl.get_shape()), sl.get_dtype())

    @classmethod
    def for_checkpoint(cls, path: str, qconfig: Dict[str, Any]) -> "_TensorIndex":
        index_path = os.path.join(path, INDEX_NAME)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
            if missing:
                raise CheckpointError(f"{index_path} names shards that do not exist: {missing[:3]}")
            return cls(path, files)
        candidates = [WEIGHTS_NAME]
        base = qconfig.get("model_file_base_name")
        if base:
            candidates.insert(0, base if base.endswith(".safetensors") else base + ".safetensors")
        for name in candidates:
            if os.path.isfile(os.path.join(path, name)):
                return cls(path, [name])
        found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if len(found) == 1:
            return cls(path, found)
        raise CheckpointError(f"{path}: no weights found (looked for {INDEX_NAME}, {', '.join(candidates)}"
                              f"{', or a single *.safetensors file' if not found else f'; found several: {found}'})")

    def load(self, keys: Iterable[str]) -> Dict[str, torch.Tensor]:
        from safetensors import safe_open

        by_file: Dict[str, List[str]] = {}
        for key in keys:
            by_file.setdefault(self.location[key], []).append(key)
        out = {}
        for file, names in by_file.items():
            with safe_open(os.path.join(self.path, file), framework="pt") as f:
                for key in names:
                    out[key] = f.get_tensor(key)
        return out


# ------------------------------------------------------------------------------- planning the modules
@dataclass
class _PlannedLayer:
    name: str
    in_features: int
    out_features: int
    bias: bool
    settings: LayerSettings
    scale_dtype: torch.dtype


def _torch_dtype(safetensors_dtype: str) -> torch.dtype:
    return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "I32": torch.int32,
            "F64": torch.float64, "I64": torch.int64}.get(safetensors_dtype, torch.float32)


def _plan_layers(model: nn.Module, settings: QuantizationSettings, index: _TensorIndex) -> List[_PlannedLayer]:
    """Every module the checkpoint holds packed tensors for, checked against the model and the config."""
    from .driver import find_decoder_layers, is_linear, linear_weight

    marker = _METHODS[settings.quant_method][0]
    planned = []
    for key in sorted(index.info):
        if not key.endswith("." + marker):
            continue
        name = key[: -len(marker) - 1]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{key}: the model ({type(model).__name__}) has no module {name!r}") from None
        if not is_linear(module):
            raise CheckpointError(f"{key}: {name} is a {type(module).__name__}, not a linear layer")
        layer = settings.layer(name)
        if layer is None:
            raise CheckpointError(f"{key}: the config's 'dynamic' leaves {name} unquantized, but the checkpoint "
                                  "holds packed tensors for it")
        out_features, in_features = linear_weight(module).shape
        has_bias = f"{name}.bias" in index.info
        if not has_bias and getattr(module, "bias", None) is not None:
            raise CheckpointError(f"{name}.bias is missing (the model's {name} has a bias)")
        scale_key = f"{name}.scales" if settings.quant_method == "gptq" else f"{name}.alpha"
        if scale_key not in index.info:
            raise CheckpointError(f"{scale_key} is missing")
        scale_dtype = _torch_dtype(index.info[scale_key][1])  # a wrong one is reported when the layer loads
        planned.append(_PlannedLayer(name, in_features, out_features, has_bias, layer,
                                     scale_dtype if scale_dtype in FLOAT_DTYPES else torch.float16))
    if not planned:
        raise CheckpointError(f"{index.path}: the checkpoint has no quantized layer (no tensor named *.{marker})")
    # Layers the config says are quantized must be in the checkpoint in one form or the other.
    _, layers = find_decoder_layers(model)
    layers_name = next(n for n, m in model.named_modules() if m is layers)
    quantized = {p.name for p in planned}
    for name, module in layers.named_modules():
        full = f"{layers_name}.{name}"
        if is_linear(module) and full not in quantized and f"{full}.weight" not in index.info:
            raise CheckpointError(f"{full}.{marker} is missing (and there is no float {full}.weight either)")
    return planned


def _new_layer(plan: _PlannedLayer, method: str, device=None) -> nn.Module:
    if method == "gptqt":
        from .bcq_linear import BCQLinear

        return BCQLinear(plan.in_features, plan.out_features, bias=plan.bias, planes=plan.settings.bits,
                         group_size=plan.settings.group_size, dtype=plan.scale_dtype, device=device)
    return QuantLinear(plan.in_features, plan.out_features, bias=plan.bias, bits=plan.settings.bits,
                       group_size=plan.settings.group_size, dtype=plan.scale_dtype, device=device)


def _layer_state(plan: _PlannedLayer, settings: QuantizationSettings,
                 tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """One layer's tensors from the checkpoint, checked, with v2 zero points converted to the v1 layout."""
    state = {}
    for key in _LAYER_TENSORS[settings.quant_method]:
        full = f"{plan.name}.{key}"
        if full in tensors:
            state[key] = tensors[full]
    bits = plan.settings.bits
    if settings.quant_method == "gptq" and settings.checkpoint_format == "gptq_v2" and "qzeros" in state:
        expected = (state["scales"].shape[0], plan.out_features * bits // 32)
        if tuple(state["qzeros"].shape) != expected:
            raise CheckpointError(f"{plan.name}.qzeros has shape {tuple(state['qzeros'].shape)}, expected "
                                  f"{expected} for bits={bits}")
        zeros = reference.zeros_from_checkpoint(state["qzeros"], bits, "gptq_v2")
        state["qzeros"] = reference.zeros_to_checkpoint(zeros, bits, "gptq")
    if "g_idx" not in state:  # some older checkpoints omit it when there is no act-order
        from .format import default_g_idx

        state["g_idx"] = default_g_idx(plan.in_features, plan.settings.group_size)
    _check_layer_state(plan, settings.quant_method, state)
    return state


def _check_layer_state(plan: _PlannedLayer, method: str, state: Dict[str, torch.Tensor]) -> None:
    """Shapes, dtypes and presence of one layer's tensors, with errors naming the checkpoint tensor."""
    from .bcq_format import check_bcq_tensors
    from .format import check_layer_tensors

    check = check_bcq_tensors if method == "gptqt" else check_layer_tensors
    required = _LAYER_TENSORS[method][:3] + (("bias",) if plan.bias else ())
    try:
        check(state, plan.in_features, plan.out_features, plan.settings.bits, plan.settings.group_size,
              name=plan.name, required=required)
    except ValueError as error:
        raise CheckpointError(f"{error} (as the config declares for {plan.name})") from None


# --------------------------------------------------------------------------------------------- loading
def load_quantized(path: str, device: Optional[Union[str, torch.device]] = None,
                   dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A transformers causal LM with QuantLinear (or BCQLinear) layers from a GPTQ checkpoint directory.

    Reads checkpoints written here, by AutoGPTQ and by GPTQModel: bits 2/3/4/8, sym and asym, act-order,
    ``gptq`` and ``gptq_v2`` formats, per-module ``dynamic`` settings, sharded or single-file safetensors, a
    quantized or float ``lm_head``. `dtype` is the dtype of the float tensors (embeddings, norms, an unquantized
    lm_head; default float32 on the CPU, the config's dtype elsewhere); packed tensors and their scales are kept
    as stored. Any tensor that is missing, unexpected or of the wrong shape or dtype raises CheckpointError
    naming it, and no model is returned.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    path = _local_checkpoint(path)
    _, settings = read_quantization_settings(path)
    index = _TensorIndex.for_checkpoint(path, settings.raw or {})
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the layers are built here, not by a transformers quantizer
    device = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None:
        config_dtype = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
        if isinstance(config_dtype, str):
            config_dtype = getattr(torch, config_dtype, None)
        dtype = torch.float32 if device.type == "cpu" or config_dtype is None else config_dtype
    with init_empty_weights():  # parameters on the meta device; buffers (rotary tables) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)

    planned = _plan_layers(model, settings, index)
    packed_keys = {f"{p.name}.{k}" for p in planned for k in _LAYER_TENSORS[settings.quant_method]}
    tensors = index.load(k for k in index.info if k in packed_keys)
    for plan in planned:
        layer = _new_layer(plan, settings.quant_method)
        layer.load_state_dict(_layer_state(plan, settings, tensors))  # checked there, errors name the tensor
        _replace_module(model, plan.name, layer)
    del tensors

    expected = dict(model.state_dict(keep_vars=True))
    rest_keys = [k for k in index.info if k not in packed_keys]
    unexpected = [k for k in rest_keys if k not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: tensors the model does not have: {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    rest = index.load(rest_keys)
    for key, tensor in rest.items():
        target = expected[key]
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f"{key} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
        if tensor.is_floating_point():
            rest[key] = tensor.to(dtype)
    model.load_state_dict(rest, strict=False, assign=True)
    output = model.get_output_embeddings()
    if getattr(model.config, "tie_word_embeddings", False) and not isinstance(output, (QuantLinear,)) and \
            type(output).__name__ != "BCQLinear":
        model.tie_weights()
    still_meta = [n for n, t in model.state_dict(keep_vars=True).items() if t.is_meta]
    if still_meta:
        raise CheckpointError(f"{path}: tensors missing from the checkpoint: {still_meta[:5]}"
                              f"{' ...' if len(still_meta) > 5 else ''}")
    model.gptq_kernels_config = _model_settings(settings)
    model.eval()
    return model.to(device)


def _local_checkpoint(path: str) -> str:
    """`path` itself when it is a directory; otherwise a model hub id, fetched (configs and safetensors only)."""
    if os.path.isdir(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as error:  # offline, unknown id, ...: say both things that were tried
        raise CheckpointError(f"{path}: not a local directory, and fetching it from the model hub failed: "
                              f"{type(error).__name__}: {error}") from None


def _model_settings(settings: QuantizationSettings) -> Dict[str, Any]:
    """gptq_kernels_config of a loaded model: what save_quantized writes back."""
    raw = dict(settings.raw or {})
    out = {k: v for k, v in raw.items() if k not in ("quant_method", "checkpoint_format", "format", "meta")}
    out.update(method=settings.quant_method, bits=settings.bits, group_size=settings.group_size, sym=settings.sym,
               desc_act=settings.desc_act, static_groups=bool(raw.get("static_groups", False)),
               damp_percent=raw.get("damp_percent", 0.01), true_sequential=raw.get("true_sequential", True))
    return out


def _replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
