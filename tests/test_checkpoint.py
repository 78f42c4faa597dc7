"""Checkpoints: reading what AutoGPTQ / GPTQModel write, writing what they read, and the transformers hook.

The checkpoints read here are written by the test itself, independently of gptq_kernels: random integers,
scales and zero points packed with tests/bitstream.py's bit-by-bit packer (zero points as GPTQModel stores
them, borrows included), next to the float tensors of a tiny transformers model. The expected model is that
float model with every quantized weight replaced by its float64 dequantization, so any misread bit shows.
"""
import json
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import gptq_kernels as gk
from bitstream import expected_weight_t, pack_bitstream, random_layer
from gptq_kernels import CheckpointError, QuantLinear
from gptq_kernels.checkpoint import parse_size

VOCAB = 128


def tiny_llama(seed=0, hidden=96, tie=True):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=160,
                                      num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                                      max_position_embeddings=64, tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(config).eval()


def linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]


def write_checkpoint(path, *, bits=4, group_size=64, sym=False, desc_act=False, checkpoint_format="gptq",
                     overrides=None, skipped=(), quantize_lm_head=False, legacy=False, seed=0):
    """An AutoGPTQ/GPTQModel-style checkpoint of tiny_llama(seed) written without gptq_kernels.

    Returns the float reference model whose quantized linears hold the float64 dequantized weights.
    overrides: {module name: bits} (written as GPTQModel "dynamic" entries); skipped: modules left float
    ("-:" entries). legacy: AutoGPTQ style, quantize_config.json only, a named weights file and no g_idx.
    """
    model = tiny_llama(seed, tie=not quantize_lm_head)
    reference = tiny_llama(seed, tie=not quantize_lm_head)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if not quantize_lm_head and model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    names = linear_names(model) + (["lm_head"] if quantize_lm_head else [])
    for name in names:
        if name in skipped:
            continue
        layer_bits = (overrides or {}).get(name, bits)
        out_features, in_features = model.get_submodule(name).weight.shape
        tensors, q, scale, zero, g_idx = random_layer(in_features, out_features, layer_bits, group_size,
                                                      act_order=desc_act, sym=sym)
        if checkpoint_format == "gptq_v2":
            tensors["qzeros"] = pack_bitstream(zero.t().contiguous(), layer_bits).t().contiguous()
        if legacy:
            del tensors["g_idx"]
        del state[f"{name}.weight"]
        state.update({f"{name}.{k}": v for k, v in tensors.items()})
        with torch.no_grad():
            reference.get_submodule(name).weight.copy_(expected_weight_t(q, scale, zero, g_idx).t())
    qconfig = {"bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym, "quant_method": "gptq",
               "checkpoint_format": checkpoint_format, "damp_percent": 0.01, "true_sequential": True,
               "lm_head": quantize_lm_head}
    dynamic = {f"+:{name.replace('.', '[.]')}$": {"bits": b} for name, b in (overrides or {}).items()}
    dynamic.update({f"-:{name.replace('.', '[.]')}$": {} for name in skipped})
    if dynamic:
        qconfig["dynamic"] = dynamic
    os.makedirs(path, exist_ok=True)
    config = model.config.to_dict()
    if legacy:
        qconfig = {k: v for k, v in qconfig.items() if k not in ("quant_method", "checkpoint_format", "lm_head")}
        qconfig["model_file_base_name"] = "gptq_model-4bit-64g"
        save_file(state, os.path.join(path, "gptq_model-4bit-64g.safetensors"))
        with open(os.path.join(path, "quantize_config.json"), "w") as f:
            json.dump(qconfig, f)
    else:
        config["quantization_config"] = qconfig
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return reference


def ids(seed=3, batch=2, length=24):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x).logits.double()


def assert_close_logits(model, reference):
    x = ids()
    got, want = logits(model, x), logits(reference, x)
    assert (got - want).norm() <= 1e-5 * want.norm(), (got - want).abs().max()


# ----------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("variant", ["asym-act-order", "asym-v2", "sym"])
def test_loads_gptq_checkpoints(tmp_path, bits, variant):
    options = {"asym-act-order": dict(sym=False, desc_act=True),
               "asym-v2": dict(sym=False, checkpoint_format="gptq_v2"),
               "sym": dict(sym=True)}[variant]
    reference = write_checkpoint(tmp_path, bits=bits, **options)
    model = gk.load_quantized(str(tmp_path))
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 14 and all(m.bits == bits for m in layers)
    for name in linear_names(reference):
        torch.testing.assert_close(model.get_submodule(name).dequantize(torch.float64),
                                   reference.get_submodule(name).weight.double(), rtol=0, atol=1e-6)
    assert_close_logits(model, reference)


def test_loads_legacy_autogptq_checkpoint_with_partial_group(tmp_path):
    # hidden 96 with group 64: the last group of every K=96 layer is partial; no g_idx tensors at all.
    reference = write_checkpoint(tmp_path, bits=4, group_size=64, sym=True, legacy=True)
    assert not os.path.exists(tmp_path / "model.safetensors")
    assert_close_logits(gk.load_quantized(str(tmp_path)), reference)


def test_dynamic_per_module_settings_and_quantized_lm_head(tmp_path):
    overrides = {"model.layers.0.mlp.down_proj": 8, "model.layers.1.self_attn.q_proj": 2}
    skipped = ("model.layers.1.mlp.up_proj",)
    reference = write_checkpoint(tmp_path, bits=4, overrides=overrides, skipped=skipped, quantize_lm_head=True)
    model = gk.load_quantized(str(tmp_path))
    assert model.get_submodule("model.layers.0.mlp.down_proj").bits == 8
    assert model.get_submodule("model.layers.1.self_attn.q_proj").bits == 2
    assert isinstance(model.get_submodule("model.layers.1.mlp.up_proj"), torch.nn.Linear)
    assert isinstance(model.lm_head, QuantLinear)
    assert_close_logits(model, reference)


def test_dtype_and_no_float_weights_for_quantized_layers(tmp_path):
    write_checkpoint(tmp_path, bits=4)
    model = gk.load_quantized(str(tmp_path), dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as the config says
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, QuantLinear) and not any(n == "weight" for n, _ in layer.named_parameters())
    assert layer.scales.dtype == torch.float16  # packed tensors and scales stay as stored


# ------------------------------------------------------------------------------------------------ errors
def _rewrite(path, edit):
    file = os.path.join(path, "model.safetensors")
    state = load_file(file)
    edit(state)
    save_file(state, file)


@pytest.mark.parametrize("case, match", [
    ("wrong-bits", r"model.layers.0.self_attn.q_proj.qweight has shape \(9, 96\), expected \(12, 96\)"),
    ("missing-qzeros", r"model.layers.1.mlp.up_proj.qzeros is missing"),
    ("missing-float", r"tensors missing from the checkpoint: \['model.norm.weight'\]"),
    ("unexpected", r"tensors the model does not have: \['model.extra'\]"),
    ("wrong-dtype", r"model.layers.0.mlp.gate_proj.scales has dtype int32"),
    ("missing-layer", r"model.layers.0.mlp.down_proj.qweight is missing"),
])
def test_mismatches_name_the_tensor(tmp_path, case, match):
    write_checkpoint(tmp_path, bits=4)
    if case == "wrong-bits":  # a 3-bit qweight in a checkpoint that declares 4 bits
        _rewrite(tmp_path, lambda s: s.__setitem__("model.layers.0.self_attn.q_proj.qweight",
                                                   torch.zeros(9, 96, dtype=torch.int32)))
    elif case == "missing-qzeros":
        _rewrite(tmp_path, lambda s: s.pop("model.layers.1.mlp.up_proj.qzeros"))
    elif case == "missing-float":
        _rewrite(tmp_path, lambda s: s.pop("model.norm.weight"))
    elif case == "unexpected":
        _rewrite(tmp_path, lambda s: s.__setitem__("model.extra", torch.zeros(3)))
    elif case == "wrong-dtype":
        _rewrite(tmp_path, lambda s: s.__setitem__("model.layers.0.mlp.gate_proj.scales",
                                                   s["model.layers.0.mlp.gate_proj.scales"].int()))
    elif case == "missing-layer":
        _rewrite(tmp_path, lambda s: [s.pop(k) for k in list(s) if k.startswith("model.layers.0.mlp.down_proj.")])
    with pytest.raises(CheckpointError, match=match):
        gk.load_quantized(str(tmp_path))


def test_config_errors(tmp_path):
    write_checkpoint(tmp_path, bits=4)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    for change, match in [({"bits": 5}, "bits=5 is not supported"),
                          ({"checkpoint_format": "marlin"}, "checkpoint_format 'marlin' is not supported"),
                          ({"quant_method": "awq"}, "quant_method 'awq' is not supported")]:
        config_path.write_text(json.dumps(dict(config, quantization_config=dict(config["quantization_config"],
                                                                                 **change))))
        with pytest.raises(CheckpointError, match=match):
            gk.load_quantized(str(tmp_path))
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k != "quantization_config"}))
    with pytest.raises(CheckpointError, match="not a quantized checkpoint"):
        gk.load_quantized(str(tmp_path))


# ------------------------------------------------------------------------------------------------ saving
def test_save_round_trips_bit_for_bit_and_writes_both_configs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_checkpoint(src, bits=2, sym=False, desc_act=True)  # 2-bit asym: zero points of 0 and borrows
    model = gk.load_quantized(str(src))
    gk.save_quantized(model, str(dst), checkpoint_format="gptq")
    original, saved = load_file(str(src / "model.safetensors")), load_file(str(dst / "model.safetensors"))
    assert set(original) == set(saved)
    for key, tensor in original.items():
        assert torch.equal(saved[key].to(tensor.dtype), tensor), key
    qconfig = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert json.loads((dst / "quantize_config.json").read_text()) == qconfig
    assert qconfig["quant_method"] == "gptq" and qconfig["checkpoint_format"] == "gptq"
    assert (qconfig["bits"], qconfig["group_size"], qconfig["desc_act"], qconfig["sym"]) == (2, 64, True, False)
    assert qconfig["meta"]["quantizer"] == [f"gptq_kernels:{gk.__version__}"]


def test_sharded_save_and_load(tmp_path):
    model = tiny_llama()
    gk.quantize_model_rtn(model, bits=4, group_size=32, progress=False)
    gk.save_quantized(model, str(tmp_path), max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert all(os.path.getsize(tmp_path / s) <= 40_000 + 16_384 for s in shards)  # + one tensor's slack
    assert not (tmp_path / "model.safetensors").exists()
    assert_close_logits(gk.load_quantized(str(tmp_path)), model)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    model = tiny_llama()
    gk.quantize_model_rtn(model, bits=4, group_size=32, progress=False)
    out = tmp_path / "ckpt"
    gk.save_quantized(model, str(out))
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    calls = []

    def failing_save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save_file(*args, **kwargs)

    real_save_file = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    with pytest.raises(KeyboardInterrupt):
        gk.save_quantized(model, str(out), max_shard_size="40KB")
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
    assert os.listdir(tmp_path) == ["ckpt"]  # no staging directory left behind


def test_parse_size():
    assert parse_size("4GB") == 4 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(123) == 123
    assert parse_size("1.5MB") == 1_500_000
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("lots")


# ---------------------------------------------------------------------------------------- transformers
def test_patch_transformers_loads_gptq_checkpoints_with_our_layers(tmp_path):
    reference = write_checkpoint(tmp_path, bits=3, sym=False, desc_act=True, checkpoint_format="gptq_v2")
    gk.patch_transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
        assert isinstance(model.model.layers[1].mlp.down_proj, QuantLinear)
        assert_close_logits(model.eval(), reference)
        # What transformers loaded saves back through save_quantized.
        gk.save_quantized(model, str(tmp_path / "resaved"))
        assert_close_logits(gk.load_quantized(str(tmp_path / "resaved")), reference)
    finally:
        gk.unpatch_transformers()
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    assert AUTO_QUANTIZER_MAPPING["gptq"].__name__ == "GptqHfQuantizer"


def test_partial_load_keeps_act_order_layers_correct():
    tensors, q, scale, zero, g_idx = random_layer(96, 64, 4, 32, act_order=True)
    layer = QuantLinear(96, 64, bias=False, bits=4, group_size=32, dtype=torch.float16)
    layer.load_state_dict(tensors)
    layer.load_state_dict({"scales": tensors["scales"]}, strict=False)  # touches neither qweight nor g_idx
    x = torch.randn(3, 96, dtype=torch.float64)
    want = x @ expected_weight_t(q, scale, zero, g_idx)
    got = layer(x.float()).double()
    assert (got - want).norm() <= 1e-5 * want.norm()
    assert torch.equal(layer.state_dict()["qweight"], tensors["qweight"])


def test_a_path_that_is_neither_a_directory_nor_reachable_says_so():
    with pytest.raises(CheckpointError, match="not a local directory"):
        gk.load_quantized("/no/such/checkpoint")


def test_asymmetric_models_are_saved_as_gptq_v2_by_default(tmp_path):
    write_checkpoint(tmp_path / "src", bits=4, sym=False)
    model = gk.load_quantized(str(tmp_path / "src"))
    gk.save_quantized(model, str(tmp_path / "v2"))
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["quantization_config"]["checkpoint_format"] \
        == "gptq_v2"
    v1, v2 = load_file(str(tmp_path / "src" / "model.safetensors")), load_file(str(tmp_path / "v2" / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.qzeros"
    zeros = torch.from_numpy(__import__("bitstream").unpack_bitstream(v2[key].t().contiguous(), 4).numpy()).t()
    assert torch.equal(zeros, gk.reference.zeros_from_checkpoint(v1[key], 4, "gptq"))
    assert_close_logits(gk.load_quantized(str(tmp_path / "v2")), model)
    with pytest.raises(ValueError, match="checkpoint_format must be"):
        gk.save_quantized(model, str(tmp_path / "bad"), checkpoint_format="marlin")
