"""quantize_model: GPTQ, GPTQT or round-to-nearest over a Hugging Face decoder model, one decoder layer at a time.

The decoder layers are found from the model's structure (the largest ModuleList of identical blocks that
contain linear layers: ``model.layers`` in Llama/Mistral/Qwen, ``model.decoder.layers`` in OPT,
``transformer.h`` in GPT-2), not from a list of families. The run:

1. captures the inputs of the first decoder layer for every calibration sample, with the keyword arguments
   the model passes it (attention mask, position ids, rotary embeddings), by a forward that stops there;
2. for each layer, on ``device``: finds its linear layers and the order they run in, groups those that read
   the same input (q/k/v, gate/up), and for each group in order (true-sequential) collects the Hessian of
   the group's input with a forward hook, quantizes the group, and puts the quantized weights in place so
   the next group's Hessian sees the quantized earlier groups. Each pass stops where the group's input has
   been seen, and replays the outputs of the linears quantized before it instead of recomputing them
   (within a memory budget), so every linear's GEMM runs about once per sample; once all of a part's linears
   are quantized (the attention, after its output projection), later passes replay that part whole;
3. reruns the quantized layer to get the next layer's inputs, replaces its linears by QuantLinear (GPTQ, RTN)
   or BCQLinear (GPTQT, binary-coded) and moves it back where it was.

With ``work_dir`` every finished layer and the next layer's inputs are saved (temporary file, then rename);
a run with the same work_dir and settings resumes after the last finished layer.
"""
from __future__ import annotations

import csv
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .bcq_linear import BCQLinear
from .data import TextSource, calibration_samples
from .gptq import _use_onednn, float32_linear, prepare_hessian, quantize_weight
from .gptqt import DEFAULT_REEXPLORE, BCQWeight, quantize_weight_gptqt
from .nn import QuantLinear
from .quantized import QuantizedWeight, quantize_rtn

METHODS = ("gptq", "rtn", "gptqt")
QUANTIZED_LINEARS = (QuantLinear, BCQLinear)


@dataclass
class LayerReport:
    layer: int
    module: str
    method: str
    error: Optional[float]  # the GPTQ objective (GPTQWeight.error, BCQWeight.error); None for round-to-nearest
    damp_percent: Optional[float]
    seconds: float


class _StopForward(Exception):
    """Raised by a hook to end a forward once what it was run for has been seen."""


# ------------------------------------------------------------------------------------------- structure
def is_linear(module: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2), which is a linear layer with a transposed weight."""
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def quantizable_linears(layer: nn.Module, index: int) -> List[str]:
    """Names of the layer's linears; those the GPTQ layout cannot hold (features not multiples of 32) stay float."""
    names = []
    for name, module in layer.named_modules():
        if not is_linear(module):
            continue
        out_features, in_features = linear_weight(module).shape
        if in_features % 32 or out_features % 32:
            warnings.warn(f"layers.{index}.{name}: {in_features} -> {out_features} features are not multiples of "
                          "32, which GPTQ packing needs; left unquantized", RuntimeWarning, stacklevel=3)
            continue
        names.append(name)
    return names


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] (nn.Linear convention)."""
    return module.weight.t() if type(module).__name__ == "Conv1D" else module.weight


def find_decoder_layers(model: nn.Module) -> Tuple[str, nn.ModuleList]:
    """(name, ModuleList) of the decoder layers: the largest ModuleList of same-type blocks with linear layers."""
    best = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1 or not any(
                is_linear(m) or isinstance(m, QUANTIZED_LINEARS) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[2]:
            best = (name, module, size)
    if best is None:
        raise ValueError(f"found no decoder layers in {type(model).__name__}: expected a ModuleList of identical "
                         "blocks containing linear layers")
    return best[0], best[1]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class _Catcher(nn.Module):
    """Stands in for the first decoder layer: records its inputs and stops the forward."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.captured: List[Tuple[torch.Tensor, Dict]] = []

    def __getattr__(self, name):  # models read attributes of their layers (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = dict(kwargs)
        for key in ("past_key_value", "past_key_values", "layer_past"):
            if key in kwargs:
                kwargs[key] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        self.captured.append((hidden, kwargs))
        raise _StopForward


def _layer_output(output):
    return output[0] if isinstance(output, (tuple, list)) else output


# ------------------------------------------------------------------------------------------ per layer
class _Hessian:
    """H = 2/n * sum over rows x of x x^T, accumulated in float32 on the layer's device.

    On the CPU only the lower triangle is accumulated (H is symmetric), one band of rows at a time: about 35%
    less time than the full product, which this accumulation is bound by (on AVX-512 CPUs through oneDNN, as
    gptq.float32_linear: at 1536 columns another 1.8x).
    """

    _CPU_BAND = 128

    def __init__(self, columns: int, device):
        self.sum = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        self.rows += x.shape[0]
        if self.sum.device.type != "cpu":
            self.sum.addmm_(x.t(), x)
            return
        if _use_onednn(x):  # oneDNN's linear wants x^T rows contiguous; bands of 256 suit it best
            x_t = x.t().contiguous()
            for i in range(0, x_t.shape[0], 2 * self._CPU_BAND):
                j = i + 2 * self._CPU_BAND
                self.sum[i:j, :j] += float32_linear(x_t[i:j], x_t[:j])
            return
        band = self._CPU_BAND
        for i in range(0, x.shape[1], band):  # rows i..i+band of H, columns up to the diagonal block's end
            self.sum[i:i + band, :i + band].addmm_(x[:, i:i + band].t(), x[:, :i + band])

    def value(self) -> torch.Tensor:
        full = self.sum
        if full.device.type == "cpu":
            full = self.sum.tril()
            full += self.sum.tril(-1).t()
        return full * (2.0 / max(self.rows, 1))


def _input_sets(layer: nn.Module, names: Sequence[str], sample) -> List[List[str]]:
    """The layer's linears in execution order, consecutive ones reading the same tensor grouped together.

    Linears that this sample never reaches come last, each on its own.
    """
    seen: List[Tuple[str, torch.Tensor]] = []
    hooks = [layer.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: seen.append((n, args[0]))) for n in names]
    try:
        hidden, kwargs = sample
        layer(hidden, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    sets: List[List[str]] = []
    last = None
    for name, x in seen:
        if any(name in s for s in sets):
            continue  # a linear called twice keeps its first place
        if last is not None and x is last:
            sets[-1].append(name)
        else:
            sets.append([name])
        last = x
    called = {n for s in sets for n in s}
    return sets + [[n] for n in names if n not in called]


class _Pass:
    """Which forward of the layer is running: (pass number, sample index), read by _Replayed."""

    def __init__(self):
        self.key = (0, -1)


def _run_layer(layer, samples, current: Optional[_Pass] = None,
               stop_before: Optional[nn.Module] = None) -> List[torch.Tensor]:
    """Runs the layer on every sample; returns the outputs (none when stop_before ends each forward early).

    stop_before: the forward ends when this module is about to run (after the hooks registered before this
    call have seen its input).
    """
    outputs = []
    hook = None
    if stop_before is not None:
        def stop(module, args):
            raise _StopForward
        hook = stop_before.register_forward_pre_hook(stop)
    pass_number = current.key[0] + 1 if current is not None else 0
    try:
        for i, (hidden, kwargs) in enumerate(samples):
            if current is not None:
                current.key = (pass_number, i)
            try:
                outputs.append(_layer_output(layer(hidden, **kwargs)))
            except _StopForward:
                pass
    finally:
        if hook is not None:
            hook.remove()
    return outputs


def _tensors(value) -> List[torch.Tensor]:
    """The tensors in a module's output or arguments (tensors, tuples, lists, dicts), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class _Replayed(nn.Module):
    """Wraps a module that is final for the rest of its layer's passes: a quantized linear, or a part of the layer
    (its attention, say) whose linears are all quantized. Its output for each sample is computed once and replayed
    in the later passes (the later groups' Hessians and the final pass), which then skip its work. Replaying is
    exact: the module's input is final too, because everything upstream of it was quantized before it
    (true-sequential order is execution order).

    Outputs are kept while the shared budget (bytes) lasts. An output that something changed in place (a version
    counter moved) or whose leading dimensions do not match the first input's is recomputed instead.
    """

    def __init__(self, module: nn.Module, current: _Pass, budget: List[int]):
        super().__init__()
        self.inner = module
        self._current, self._budget = current, budget
        self._outputs: Dict[Tuple, Tuple[object, List[int], int]] = {}
        self._key, self._calls = None, 0

    def __getattr__(self, name):  # models read attributes of their modules (weight.dtype, head_dim, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, *args, **kwargs):
        if self._current.key != self._key:  # a new sample: count this module's calls within its forward
            self._key, self._calls = self._current.key, 0
        key = (self._current.key[1], self._calls)
        self._calls += 1
        saved = self._outputs.get(key)
        if saved is not None:
            out, versions, size = saved
            tensors, inputs = _tensors(out), _tensors((args, kwargs))  # only outputs with tensors are kept
            if [t._version for t in tensors] == versions and inputs and tensors[0].shape[:-1] == inputs[0].shape[:-1]:
                return out
            del self._outputs[key]
            self._budget[0] += size
        out = self.inner(*args, **kwargs)
        tensors = _tensors(out)
        size = sum(t.numel() * t.element_size() for t in tensors)
        if tensors and size <= self._budget[0]:
            self._outputs[key] = (out, [t._version for t in tensors], size)
            self._budget[0] -= size
        return out


def _replay_budget(device: torch.device) -> int:
    """Bytes that replayed outputs may take: a quarter of the device's free memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 0


class _StandInLinear(nn.Linear):
    """nn.Linear through float32_linear: in the driver's passes almost every GEMM is one of these."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float32_linear(x, self.weight, self.bias)


def _float_stand_in(module: nn.Module, weight: torch.Tensor) -> nn.Linear:
    """An nn.Linear computing with the dequantized weight: the layer's later groups see the quantized output."""
    old = linear_weight(module)
    linear = nn.utils.skip_init(_StandInLinear, weight.shape[1], weight.shape[0], bias=module.bias is not None,
                                dtype=old.dtype, device=old.device)  # no random init: both are overwritten
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


# ------------------------------------------------------------------------------------------ resuming
_SETTINGS = ("method", "bits", "group_size", "sym", "desc_act", "act_group_aware", "static_groups",
             "damp_percent", "true_sequential", "layers", "intermediate_bits", "reexplore")


# Settings that work directories of earlier versions do not record, with the value those runs used.
_SETTINGS_ADDED_LATER = {"act_group_aware": False}


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _layer_state(quantized: Dict[str, Tuple[QuantizedWeight, Optional[torch.Tensor]]]) -> Dict:
    return {name: {**{k: v.cpu() for k, v in qw.tensors().items()}, "bias": None if b is None else b.cpu()}
            for name, (qw, b) in quantized.items()}


def _restore_layer(layer: nn.Module, state: Dict, bits: int, group_size: int, sym: bool, dtype) -> None:
    for name, t in state.items():
        if "qplanes" in t:  # binary-coded (GPTQT)
            tensors = {k: t[k] for k in ("qplanes", "alpha", "offset", "g_idx")}
            module = BCQLinear.from_tensors(tensors, group_size, bias=t["bias"], dtype=dtype)
        else:
            qw = QuantizedWeight(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, group_size, sym)
            module = qw.to_quant_linear(bias=t["bias"], dtype=dtype)
        _set_submodule(layer, name, module)


def _quantized_module(qw, bias: Optional[torch.Tensor], dtype) -> nn.Module:
    if isinstance(qw, BCQWeight):
        return qw.to_linear(bias=bias, dtype=dtype)
    return qw.to_quant_linear(bias=bias, dtype=dtype)


# ------------------------------------------------------------------------------------------ the driver
@torch.no_grad()
def quantize_model(model: nn.Module, calibration: Optional[TextSource] = None, *, tokenizer=None, bits: int = 4,
                   group_size: int = 128, sym: bool = True, desc_act: bool = False, static_groups: bool = False,
                   act_group_aware: Optional[bool] = None, damp_percent: float = 0.01, true_sequential: bool = True,
                   method: str = "gptq",
                   device=None, work_dir: Optional[str] = None, report_csv: Optional[str] = None,
                   seqlen: int = 512, nsamples: int = 128, block_size: int = 128,
                   intermediate_bits: int = 5, reexplore: Optional[Sequence[float]] = DEFAULT_REEXPLORE,
                   scale_dtype: torch.dtype = torch.float16, progress: bool = True,
                   on_layer_done: Optional[Callable[[int, List[LayerReport]], None]] = None) -> List[LayerReport]:
    """Quantizes every linear layer inside the decoder layers of `model` in place (lm_head and embeddings stay).

    calibration: token ids (a [n, L] tensor or a list of tensors: one sample each; a 1-D tensor: a stream cut
        into nsamples windows of seqlen), a text, a list of texts or the path of a text file (with tokenizer).
        Not needed for method="rtn".
    act_group_aware: group-aware act-order (gptq_kernels.gptq.group_aware_order): whole groups by importance,
        columns inside each by importance; the checkpoint stays without act-order. Excludes desc_act and
        static_groups; needs group_size > 0. None (default): on for method "gptq" wherever it applies (it
        costs nothing at inference and lowers the error), off otherwise.
    method: "gptq"; "gptqt" for GPTQT (binary-coded weights with ``bits`` sign planes, BCQLinear layers; see
        gptq_kernels.gptqt: intermediate_bits and reexplore apply to it only); "rtn" for the round-to-nearest
        baseline.
    device: where each layer is quantized (default: where the model is); the rest of the model stays put.
    work_dir: makes the run resumable (see the module docstring).
    on_layer_done: called as on_layer_done(layer_index, report) after each finished (and saved) layer.
    Returns the per-linear report; also written to report_csv when given.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    layers_name, layers = find_decoder_layers(model)
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    gptqt = method == "gptqt"
    if act_group_aware is None:
        act_group_aware = method == "gptq" and group_size > 0 and not desc_act and not static_groups
    if act_group_aware and gptqt:
        raise ValueError("act_group_aware applies to method='gptq' only")
    if act_group_aware and method != "rtn" and (desc_act or static_groups or group_size <= 0):
        raise ValueError("act_group_aware needs group_size > 0 and neither desc_act nor static_groups, got "
                         f"group_size={group_size}, desc_act={desc_act}, static_groups={static_groups}")
    act_group_aware = bool(act_group_aware) and method != "rtn"
    settings = dict(method=method, bits=bits, group_size=group_size, sym=sym, desc_act=desc_act,
                    act_group_aware=act_group_aware, static_groups=static_groups, damp_percent=damp_percent,
                    true_sequential=true_sequential, layers=len(layers),
                    intermediate_bits=intermediate_bits if gptqt else None,
                    reexplore=(list(reexplore) if reexplore else None) if gptqt else None)
    report: List[LayerReport] = []
    scales_dtype = scale_dtype

    first, samples = 0, None
    if work_dir is not None:
        first, samples, report = _resume(model, layers, work_dir, settings, scales_dtype)

    if method != "rtn" and samples is None:
        if calibration is None:
            raise ValueError(f"method={method!r} needs calibration data (token ids, texts or a text file)")
        tokens = calibration_samples(calibration, tokenizer, nsamples=nsamples, seqlen=seqlen)
        samples = _capture_first_layer_inputs(model, layers, tokens, device)
        if work_dir is not None:
            _atomic_save({"next_layer": 0, "samples": samples, "report": []}, os.path.join(work_dir, "state.pt"))

    iterator = range(first, len(layers))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"{method.upper()} {bits}-bit", unit="layer", initial=first,
                        total=len(layers))
    use_cache = getattr(getattr(model, "config", None), "use_cache", None)
    if use_cache is not None:
        model.config.use_cache = False
    try:
        for index in iterator:
            layer = layers[index]
            home = next(layer.parameters()).device
            layer.to(device)
            if method == "rtn":
                quantized, rows = _rtn_layer(layer, index, bits, group_size, sym, scale_dtype)
            else:
                options = dict(sym=sym, desc_act=desc_act, static_groups=static_groups, damp_percent=damp_percent,
                               block_size=block_size, scale_dtype=scale_dtype)
                if gptqt:
                    options.update(planes=bits, intermediate_bits=intermediate_bits, reexplore=reexplore)
                else:
                    options.update(bits=bits, act_group_aware=act_group_aware)
                quantized, rows, samples = _gptq_layer(layer, index, samples, method, bits, group_size,
                                                       true_sequential, options)
            for name, (qw, bias) in quantized.items():
                _set_submodule(layer, name, _quantized_module(qw, bias, scale_dtype))
            layer.to(home)
            report.extend(rows)
            if work_dir is not None:
                _atomic_save(_layer_state(quantized), os.path.join(work_dir, f"layer_{index:04d}.pt"))
                _atomic_save({"next_layer": index + 1, "samples": samples,
                              "report": [asdict(r) for r in report]}, os.path.join(work_dir, "state.pt"))
            if on_layer_done is not None:
                on_layer_done(index, report)
    finally:
        if use_cache is not None:
            model.config.use_cache = use_cache

    model.gptq_kernels_config = dict(bits=bits, group_size=group_size, sym=sym, desc_act=desc_act,
                                     act_group_aware=act_group_aware, static_groups=static_groups,
                                     damp_percent=damp_percent, true_sequential=true_sequential, method=method,
                                     layers=layers_name)
    if gptqt:
        model.gptq_kernels_config.update(intermediate_bits=intermediate_bits, reexplore=settings["reexplore"])
    if report_csv is not None:
        write_report_csv(report, report_csv)
    return report


def write_report_csv(report: Sequence[LayerReport], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in LayerReport.__dataclass_fields__])
        writer.writeheader()
        for row in report:
            writer.writerow(asdict(row))


def _capture_first_layer_inputs(model, layers, tokens, device):
    """Runs the model up to its first decoder layer for every sample; returns [(hidden, kwargs)] on `device`."""
    catcher = _Catcher(layers[0])
    moved = device != next(model.parameters()).device
    if moved:
        # Everything but the decoder layers (embeddings, rotary tables, ...) goes to `device` for the capture.
        saved = list(layers)
        for i in range(len(layers)):
            layers[i] = nn.Identity()
        home = next(model.parameters()).device
        model.to(device)
    layers[0] = catcher
    try:
        for ids in tokens:
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        layers[0] = catcher.layer
        if moved:
            model.to(home)
            for i, layer in enumerate(saved):
                layers[i] = layer
    if len(catcher.captured) != len(tokens):
        raise RuntimeError(f"the first decoder layer was reached for {len(catcher.captured)} of {len(tokens)} "
                           "calibration samples")
    return catcher.captured


def _gptq_layer(layer, index, samples, method, bits, group_size, true_sequential, options):
    """GPTQ or GPTQT (method) of one decoder layer; options: the keyword arguments of the quantizer."""
    names = quantizable_linears(layer, index)
    sets = _input_sets(layer, names, samples[0])
    stages = [[s] for s in sets] if true_sequential else [sets]
    quantized, rows = {}, []
    current, budget = _Pass(), [_replay_budget(next(layer.parameters()).device)]
    stand_ins: Dict[str, nn.Module] = {}
    replayed_children: Dict[str, nn.Module] = {}  # parts of the layer whose linears are all quantized
    try:
        for number, stage in enumerate(stages):
            _gptq_stage(layer, index, samples, stage, method, bits, group_size, options, current, budget,
                        quantized, rows, stand_ins)
            if number + 1 < len(stages):  # a later pass replays them
                _replay_finished_children(layer, names, quantized, replayed_children, current, budget)
        outputs = _run_layer(layer, samples, current)
    finally:
        for child_name, child in replayed_children.items():
            setattr(layer, child_name, child)
    for name, stand_in in stand_ins.items():  # the caller replaces the stand-ins by quantized modules
        _set_submodule(layer, name, stand_in)
    return quantized, rows, [(out, kwargs) for out, (_, kwargs) in zip(outputs, samples)]


def _replay_finished_children(layer, names, quantized, replayed, current, budget) -> None:
    """Wraps each direct child of the layer whose quantizable linears are all quantized (the attention once its
    output projection is) in _Replayed, so that later passes skip it whole (attention scores included)."""
    for child_name, child in layer.named_children():
        if is_linear(child) or isinstance(child, _Replayed):  # linears are wrapped one by one
            continue
        inside = [n for n in names if n.startswith(child_name + ".")]
        if inside and all(n in quantized for n in inside):
            replayed[child_name] = child
            setattr(layer, child_name, _Replayed(child, current, budget))


def _gptq_stage(layer, index, samples, stage, method, bits, group_size, options, current, budget, quantized,
                rows, stand_ins) -> None:
    """Collects the Hessians of one stage's input sets in one pass, quantizes their linears and puts replayed
    float stand-ins of the quantized weights in their place."""
    modules = {s[0]: layer.get_submodule(s[0]) for s in stage}
    hessians = {n: _Hessian(linear_weight(m).shape[1], linear_weight(m).device) for n, m in modules.items()}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: hessians[n].add(args[0]))
             for n, m in modules.items()]
    # The forward can stop when the stage's last input has been seen (later parts do not change the Hessians).
    try:
        _run_layer(layer, samples, current, stop_before=modules[stage[-1][0]])
    finally:
        for h in hooks:
            h.remove()
    for input_set in stage:
        hessian = hessians[input_set[0]]
        prepared = None
        if hessian.rows:  # one factorization for every linear reading this input
            prepared = prepare_hessian(hessian.value(), desc_act=options["desc_act"],
                                       damp_percent=options["damp_percent"],
                                       name=f"layers.{index}.{input_set[0]}",
                                       act_group_aware=options.get("act_group_aware", False),
                                       group_size=group_size)
        for name in input_set:
            module = layer.get_submodule(name)
            bias = None if module.bias is None else module.bias.detach()
            start = time.perf_counter()
            weight = linear_weight(module).detach()
            if hessian.rows == 0:  # never reached by the calibration data: nothing to weight the error by
                warnings.warn(f"layers.{index}.{name}: not reached by the calibration data; quantized with "
                              "round-to-nearest", RuntimeWarning, stacklevel=4)
                if method == "gptqt":  # the same binary coding, fitted without feedback or weighting
                    qw = quantize_weight_gptqt(weight, torch.eye(weight.shape[1], device=weight.device),
                                               group_size=group_size, **{**options, "desc_act": False,
                                                                         "damp_percent": 0.0})
                else:
                    qw = quantize_rtn(weight.float(), bits, group_size, options["sym"], options["scale_dtype"])
                rows.append(LayerReport(index, name, "rtn", None, None, time.perf_counter() - start))
            else:
                quantize = quantize_weight_gptqt if method == "gptqt" else quantize_weight
                qw = quantize(weight, prepared, group_size=group_size, name=f"layers.{index}.{name}", **options)
                rows.append(LayerReport(index, name, method, qw.error, qw.damp_percent,
                                        time.perf_counter() - start))
            quantized[name] = (qw, bias)
            stand_ins[name] = _float_stand_in(module, qw.dequantize(torch.float32))
            _set_submodule(layer, name, _Replayed(stand_ins[name], current, budget))


def _rtn_layer(layer, index, bits, group_size, sym, scale_dtype):
    quantized, rows = {}, []
    for name in quantizable_linears(layer, index):
        module = layer.get_submodule(name)
        start = time.perf_counter()
        qw = quantize_rtn(linear_weight(module).detach().float(), bits, group_size, sym, scale_dtype)
        quantized[name] = (qw, None if module.bias is None else module.bias.detach())
        rows.append(LayerReport(index, name, "rtn", None, None, time.perf_counter() - start))
    return quantized, rows


def _resume(model, layers, work_dir, settings, scale_dtype):
    """Restores the layers a previous run finished; returns (next layer, its inputs or None, report)."""
    os.makedirs(work_dir, exist_ok=True)
    settings_path = os.path.join(work_dir, "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            previous = json.load(f)
        for key in _SETTINGS:
            if previous.get(key, _SETTINGS_ADDED_LATER.get(key)) != settings[key]:
                raise ValueError(f"work_dir {work_dir} holds a run with {key}={previous.get(key)!r}, but this run "
                                 f"has {key}={settings[key]!r}: use another work_dir or the same settings")
    else:
        tmp = settings_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(settings, f, indent=1)
        os.replace(tmp, settings_path)
    state_path = os.path.join(work_dir, "state.pt")
    if not os.path.exists(state_path):
        return 0, None, []
    state = torch.load(state_path, weights_only=False)  # written by _atomic_save above, not foreign data
    first = state["next_layer"]
    for index in range(first):
        layer_state = torch.load(os.path.join(work_dir, f"layer_{index:04d}.pt"), weights_only=True)
        device = next(layers[index].parameters()).device
        _restore_layer(layers[index], layer_state, settings["bits"], settings["group_size"], settings["sym"],
                       scale_dtype)
        layers[index].to(device)
    return first, state["samples"], [LayerReport(**r) for r in state["report"]]
