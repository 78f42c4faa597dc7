"""quantize_model over tiny randomly initialised transformers models, resuming, perplexity and checkpoints."""
import copy
import csv
import math
import os

import pytest
import torch
import torch.nn.functional as F

import gptq_kernels as gk
from gptq_kernels import QuantLinear, data, driver

transformers = pytest.importorskip("transformers")
from tiny_models import VOCAB, calibration, logits, tiny_llama, tiny_opt  # noqa: E402
from conftest import relative_error  # noqa: E402


class CharTokenizer:
    """Characters as token ids: enough to test the text paths without a real tokenizer."""

    def __call__(self, text):
        return {"input_ids": [ord(c) % VOCAB for c in text]}


@pytest.mark.parametrize("make", [tiny_llama, tiny_opt])
def test_quantized_model_stays_close_to_the_float_model(make):
    model = make()
    ids = calibration()
    reference = logits(model, ids)
    rtn = copy.deepcopy(model)
    gk.quantize_model_rtn(rtn, bits=4, group_size=32, progress=False)
    report = gk.quantize_model(model, ids, bits=4, group_size=32, progress=False)

    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    per_layer = 7 if make is tiny_llama else 6
    assert len(linears) == len(report) == 2 * per_layer
    assert all(r.method == "gptq" and r.error > 0 and r.damp_percent == 0.01 for r in report)
    gptq_error = relative_error(logits(model, ids), reference)
    rtn_error = relative_error(logits(rtn, ids), reference)
    assert gptq_error < 0.1
    assert gptq_error < 0.85 * rtn_error


def test_linears_are_grouped_by_shared_input_in_execution_order():
    ids = calibration(n=2)
    for model, expected in [
        (tiny_llama(), [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]),
        (tiny_opt(), [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.out_proj"],
                      ["fc1"], ["fc2"]]),
    ]:
        _, layers = driver.find_decoder_layers(model)
        samples = driver._capture_first_layer_inputs(model, layers, [ids[:1]], torch.device("cpu"))
        names = driver.quantizable_linears(layers[0], 0)
        sets = driver._input_sets(layers[0], names, samples[0])
        assert sorted(sum(sets, [])) == sorted(names)
        assert [sorted(s) for s in sets] == [sorted(s) for s in expected]


@pytest.mark.parametrize("route", ["onednn", "torch"])
@pytest.mark.parametrize("columns", [64, 200, 576])
def test_hessian_accumulates_the_full_symmetric_matrix(monkeypatch, route, columns):
    # Samples of different lengths; the CPU path sums only the lower triangle, in bands of rows.
    if route == "onednn" and getattr(torch.ops.mkldnn, "_linear_pointwise", None) is None:
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(gk.gptq, "_onednn_linear", torch.ops.mkldnn._linear_pointwise if route == "onednn" else False)
    torch.manual_seed(columns)
    chunks = [torch.randn(1, rows, columns) + 0.5 for rows in (7, 1500, 900, 33, 2100)]
    hessian = driver._Hessian(columns, torch.device("cpu"))
    for x in chunks:
        hessian.add(x)
    x = torch.cat([c.reshape(-1, columns) for c in chunks]).double()
    expected = 2 * x.t() @ x / x.shape[0]
    value = hessian.value()
    assert hessian.rows == x.shape[0]
    assert torch.equal(value, value.t())
    assert relative_error(value, expected) < 1e-5


def _quantized_tensors(model):
    return {name: t for name, t in model.state_dict().items()
            if name.rsplit(".", 1)[-1] in ("qweight", "qzeros", "scales", "g_idx")}


def _count_linear_calls(monkeypatch):
    """Counts forwards of linear modules: the model's own and the driver's quantized stand-ins."""
    calls = [0]
    for cls in (torch.nn.Linear, driver._StandInLinear):
        def counting(self, x, forward=cls.forward):
            calls[0] += 1
            return forward(self, x)
        monkeypatch.setattr(cls, "forward", counting)
    return calls


def test_each_quantized_linear_computes_once_per_sample(monkeypatch):
    # Later passes over a layer replay the outputs of the linears already quantized instead of recomputing them.
    n, layers = 5, 2
    calls = _count_linear_calls(monkeypatch)
    gk.quantize_model(tiny_llama(), calibration(n=n), bits=4, group_size=32, progress=False)
    # Per layer: one forward of the first sample to find the order of the 7 linears, then each linear once per
    # sample after its group is quantized (recomputing would take 3 + 4 + 6 + 7 = 20 per sample).
    assert calls[0] == layers * (7 + 7 * n)


def test_finished_attention_is_replayed_whole():
    # Once its output projection is quantized, a layer's attention (scores and all) runs once per sample; the
    # passes for the MLP's groups and the final pass replay its output.
    n, layers = 4, 2
    model = tiny_llama()
    completed = [0] * layers
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.register_forward_hook(lambda module, args, out, i=i: completed.__setitem__(i, completed[i] + 1))
    gk.quantize_model(model, calibration(n=n), bits=4, group_size=32, progress=False)
    # One whole forward of the first sample finds the order of the linears; then the gate/up pass runs the
    # attention to its end for each sample (the q/k/v and o passes stop inside it; recomputing would add the
    # down pass and the final pass: 1 + 3n).
    assert completed == [1 + n] * layers
    assert all(type(layer.self_attn).__name__ == "LlamaAttention" for layer in model.model.layers)


def test_replayed_module_recomputes_an_output_changed_in_place():
    class Pair(torch.nn.Module):
        calls = 0

        def forward(self, x, *, scale):
            Pair.calls += 1
            return x * scale, None

    current = driver._Pass()
    budget = [1 << 20]
    replayed = driver._Replayed(Pair(), current, budget)
    x = torch.randn(3, 8)
    current.key = (1, 0)
    first, _ = replayed(x, scale=2.0)
    current.key = (2, 0)
    again, _ = replayed(x, scale=2.0)
    assert again is first and Pair.calls == 1 and budget[0] == (1 << 20) - first.numel() * 4
    again.mul_(0.5)  # a consumer changed the replayed output in place: the next pass recomputes it
    current.key = (3, 0)
    recomputed, _ = replayed(x, scale=2.0)
    assert Pair.calls == 2 and torch.equal(recomputed, x * 2.0)
    current.key = (3, 1)  # another sample: computed, not replayed
    other, _ = replayed(torch.ones(3, 8), scale=2.0)
    assert Pair.calls == 3 and torch.equal(other, torch.full((3, 8), 2.0))


def _scale_up_proj_in_place(mlp):
    def forward(x):
        up = mlp.up_proj(x)
        up.mul_(0.5)  # a model that changes a linear's output in place must not corrupt the replayed copy
        return mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * up)
    mlp.forward = forward


@pytest.mark.parametrize("in_place", [False, True])
def test_replayed_outputs_give_the_same_result_as_recomputing(monkeypatch, in_place):
    results = []
    for budget in (None, 0):
        if budget is not None:
            monkeypatch.setattr(driver, "_replay_budget", lambda device: budget)
        model = tiny_llama()
        if in_place:
            for layer in model.model.layers:
                _scale_up_proj_in_place(layer.mlp)
        report = gk.quantize_model(model, calibration(n=4), bits=3, group_size=32, progress=False)
        results.append(([r.error for r in report], _quantized_tensors(model)))
    (errors, tensors), (errors_recomputed, tensors_recomputed) = results
    assert errors == errors_recomputed
    assert tensors.keys() == tensors_recomputed.keys()
    assert all(torch.equal(tensors[k], tensors_recomputed[k]) for k in tensors)


def test_find_decoder_layers():
    name, layers = driver.find_decoder_layers(tiny_opt())
    assert name == "model.decoder.layers" and len(layers) == 2
    with pytest.raises(ValueError, match="found no decoder layers in Linear"):
        driver.find_decoder_layers(torch.nn.Linear(4, 4))


@pytest.mark.parametrize("options", [dict(desc_act=True), dict(desc_act=True, static_groups=True, sym=False),
                                     dict(true_sequential=False, group_size=-1), dict(act_group_aware=True)])
def test_options_run_end_to_end(options):
    model = tiny_llama()
    ids = calibration()
    reference = logits(model, ids)
    gk.quantize_model(model, ids, bits=4, group_size=options.pop("group_size", 32), progress=False, **options)
    assert relative_error(logits(model, ids), reference) < 0.1


def test_interrupted_run_resumes(tmp_path):
    ids = calibration()
    uninterrupted = tiny_llama()
    gk.quantize_model(uninterrupted, ids, bits=4, group_size=32, progress=False)

    class Interrupted(Exception):
        pass

    def crash_after_first_layer(index, report):
        if index == 0:
            raise Interrupted

    work_dir = str(tmp_path / "work")
    with pytest.raises(Interrupted):
        gk.quantize_model(tiny_llama(), ids, bits=4, group_size=32, progress=False, work_dir=work_dir,
                          on_layer_done=crash_after_first_layer)
    assert sorted(os.listdir(work_dir)) == ["layer_0000.pt", "settings.json", "state.pt"]

    resumed = tiny_llama()
    done = []
    report = gk.quantize_model(resumed, None, bits=4, group_size=32, progress=False, work_dir=work_dir,
                               on_layer_done=lambda index, report: done.append(index))
    assert done == [1]  # layer 0 came from the work directory
    assert len(report) == 14
    expected = uninterrupted.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key
    torch.testing.assert_close(logits(resumed, ids), logits(uninterrupted, ids))


def test_resume_refuses_other_settings(tmp_path):
    ids = calibration(n=4)
    work_dir = str(tmp_path)
    gk.quantize_model(tiny_llama(), ids, bits=4, group_size=32, progress=False, work_dir=work_dir)
    with pytest.raises(ValueError, match=r"holds a run with bits=4, but this run has bits=3"):
        gk.quantize_model(tiny_llama(), ids, bits=3, group_size=32, progress=False, work_dir=work_dir)


def test_report_csv(tmp_path):
    path = str(tmp_path / "report.csv")
    report = gk.quantize_model(tiny_opt(), calibration(n=4), bits=4, group_size=32, progress=False,
                               report_csv=path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(report) == 12
    assert list(rows[0]) == ["layer", "module", "method", "error", "damp_percent", "seconds"]
    assert rows[0]["module"] == "self_attn.q_proj" and float(rows[0]["error"]) > 0


def test_calibration_from_texts_and_files(tmp_path):
    text = data.calibration_text()[:20000]
    path = tmp_path / "calib.txt"
    path.write_text(text, encoding="utf-8")
    tokenizer = CharTokenizer()
    from_file = data.calibration_samples(str(path), tokenizer, nsamples=8, seqlen=64)
    from_text = data.calibration_samples([text], tokenizer, nsamples=8, seqlen=64)
    assert len(from_file) == 8 and all(s.shape == (1, 64) for s in from_file)
    assert all(torch.equal(a, b) for a, b in zip(from_file, from_text))
    model = tiny_llama()
    gk.quantize_model(model, str(path), tokenizer=tokenizer, nsamples=4, seqlen=64, progress=False)


def test_calibration_errors():
    with pytest.raises(ValueError, match="text was given but no tokenizer"):
        data.calibration_samples("some text", None)
    with pytest.raises(ValueError, match="fewer than one window of seqlen=64"):
        data.calibration_samples("short", CharTokenizer(), seqlen=64)
    with pytest.raises(TypeError, match="expected token ids"):
        data.token_stream(3.5)
    with pytest.raises(ValueError, match="method='gptq' needs calibration data"):
        gk.quantize_model(tiny_llama(), None, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        gk.quantize_model(tiny_llama(), calibration(), method="awq", progress=False)


def test_builtin_text_is_split_into_disjoint_parts():
    calib, held_out = data.calibration_text(), data.evaluation_text()
    assert len(calib) > 200_000 and len(held_out) > 50_000
    paragraphs = {p for p in held_out.split("\n\n") if len(p) > 200}
    assert paragraphs and not any(p in calib for p in paragraphs)


def test_perplexity_matches_a_direct_computation():
    model = tiny_llama()
    ids = torch.randint(0, VOCAB, (200,), generator=torch.Generator().manual_seed(3))
    ppl = gk.evaluate_perplexity(model, ids, seqlen=64)
    nll = []
    with torch.no_grad():
        for w in range(3):  # 200 tokens: three whole windows of 64
            x = ids[w * 64:(w + 1) * 64][None]
            nll.append(F.cross_entropy(model(x).logits[0, :-1], x[0, 1:], reduction="none"))
    assert ppl == pytest.approx(math.exp(torch.cat(nll).mean().item()), rel=1e-5)
    assert gk.evaluate_perplexity(model, ids, seqlen=64, max_windows=1) == pytest.approx(
        math.exp(nll[0].mean().item()), rel=1e-5)
    with pytest.raises(ValueError, match="fewer than one window of seqlen=512"):
        gk.evaluate_perplexity(model, ids, seqlen=512)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_llama()
    ids = calibration(n=4)
    gk.quantize_model(model, ids, bits=3, group_size=32, desc_act=True, progress=False)
    gk.save_quantized(model, str(tmp_path))
    config = transformers.AutoConfig.from_pretrained(str(tmp_path)).to_dict()["quantization_config"]
    assert config["quant_method"] == "gptq" and config["bits"] == 3 and config["desc_act"] is True
    assert config["checkpoint_format"] == "gptq" and config["group_size"] == 32
    loaded = gk.load_quantized(str(tmp_path))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids))
    with pytest.raises(ValueError, match="has not been quantized by gptq_kernels.quantize_model"):
        gk.save_quantized(tiny_llama(), str(tmp_path / "float"))


def test_act_group_aware_checkpoint_has_no_act_order(tmp_path):
    model = tiny_llama()
    ids = calibration(n=4)
    gk.quantize_model(model, ids, bits=4, group_size=32, act_group_aware=True, progress=False)
    layer = model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.g_idx, torch.arange(layer.in_features, dtype=torch.int32) // 32)
    gk.save_quantized(model, str(tmp_path))
    config = transformers.AutoConfig.from_pretrained(str(tmp_path)).to_dict()["quantization_config"]
    assert config["act_group_aware"] is True and config["desc_act"] is False
    torch.testing.assert_close(logits(gk.load_quantized(str(tmp_path)), ids), logits(model, ids))


def test_act_group_aware_errors():
    ids = calibration(n=2)
    with pytest.raises(ValueError, match="act_group_aware needs group_size > 0 and neither desc_act"):
        gk.quantize_model(tiny_llama(), ids, bits=4, group_size=32, act_group_aware=True, desc_act=True,
                          progress=False)
    with pytest.raises(ValueError, match="act_group_aware applies to method='gptq' only"):
        gk.quantize_model(tiny_llama(), ids, bits=3, group_size=32, act_group_aware=True, method="gptqt",
                          progress=False)


def test_cli_explains_every_option():
    from gptq_kernels import cli

    parser = cli._build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    assert set(subparsers.choices) == {"quantize", "eval", "demo"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
    args = parser.parse_args(["quantize", "--out", "x", "--bits", "3", "--group-size", "-1", "--asym", "--desc-act"])
    assert (args.bits, args.group_size, args.sym, args.desc_act, args.true_sequential) == (3, -1, False, True, True)
    assert not args.act_group_aware and parser.parse_args(["quantize", "--out", "x", "--act-group-aware"]).act_group_aware
    assert parser.parse_args(["demo"]).nsamples == 32


def test_cli_quantize_and_eval_a_local_model(tmp_path, capsys):
    from gptq_kernels import cli

    model_dir, out = tmp_path / "float", tmp_path / "quantized"
    tiny_llama().save_pretrained(model_dir)
    text = tmp_path / "text.txt"
    text.write_text(data.calibration_text()[:4000], encoding="utf-8")
    real_load = cli.load_model
    cli.load_model = lambda spec, device=None: _load_with_char_tokenizer(spec)  # no tokenizer files needed
    try:
        cli.main(["quantize", "--model", str(model_dir), "--out", str(out), "--bits", "4", "--group-size", "32",
                  "--calibration", str(text), "--nsamples", "4", "--seqlen", "64"])
        cli.main(["eval", "--model", str(out), "--text", str(text), "--seqlen", "64", "--max-windows", "2"])
    finally:
        cli.load_model = real_load
    output = capsys.readouterr().out
    assert "quantized 14 linear layers to 4 bits (gptq)" in output and "perplexity" in output


def test_cli_demo_runs_where_told(tmp_path, capsys, monkeypatch):
    """The main job end to end on a tiny model: its table, its checkpoint, and --device naming where the whole
    demo runs (the model is loaded onto it)."""
    from gptq_kernels import cli

    model_dir, out = tmp_path / "float", tmp_path / "demo"
    tiny_llama().save_pretrained(model_dir)
    devices = []

    def load(spec, device=None):
        devices.append(device)
        model, tokenizer = _load_with_char_tokenizer(spec)
        return (model.to(device) if device else model), tokenizer

    monkeypatch.setattr(cli, "load_model", load)
    cli.main(["demo", "--model", str(model_dir), "--out", str(out), "--bits", "4", "--group-size", "32",
              "--nsamples", "2", "--seqlen", "32", "--eval-seqlen", "32", "--eval-windows", "1", "--new-tokens", "2",
              "--device", "cpu"])
    assert devices == ["cpu"]
    output = capsys.readouterr().out
    for row in ("| float32 |", "| RTN 4-bit |", "| GPTQ 4-bit |"):
        assert row in output
    assert (out / "results.json").exists() and (out / "gptq-4bit-g32").is_dir()


class _SavableCharTokenizer(CharTokenizer):
    eos_token_id = 0

    def __call__(self, text, return_tensors=None):
        encoded = super().__call__(text)
        return {"input_ids": torch.tensor([encoded["input_ids"]])} if return_tensors == "pt" else encoded

    def save_pretrained(self, path):
        pass


def _load_with_char_tokenizer(spec):
    from gptq_kernels.checkpoint import is_quantized_checkpoint, load_quantized

    model = load_quantized(spec) if is_quantized_checkpoint(spec) else \
        transformers.AutoModelForCausalLM.from_pretrained(spec)
    return model.eval(), _SavableCharTokenizer()


@pytest.mark.slow
def test_smollm2_gptq_beats_round_to_nearest_at_3_bits():
    """The real default model end to end, at small calibration and evaluation sizes (a few minutes on 2 cores)."""
    pytest.importorskip("gguf")
    from gptq_kernels import cli

    model, tokenizer = cli.load_model("default")
    calib = data.calibration_samples(data.calibration_text(), tokenizer, nsamples=16, seqlen=256)
    held_out = data.token_stream(data.evaluation_text(), tokenizer)
    rtn = copy.deepcopy(model)
    gk.quantize_model_rtn(rtn, bits=3, group_size=128, progress=False)
    report = gk.quantize_model(model, calib, bits=3, group_size=128, progress=False)
    assert len(report) == 30 * 7
    ppl_rtn = gk.evaluate_perplexity(rtn, held_out, seqlen=256, max_windows=2)
    ppl_gptq = gk.evaluate_perplexity(model, held_out, seqlen=256, max_windows=2)
    assert ppl_gptq < 0.8 * ppl_rtn


def test_decoder_layers_are_found_after_quantization():
    from gptq_kernels.checkpoint import linear_weight_bytes

    model = tiny_llama()
    float_bytes = linear_weight_bytes(model)
    gk.quantize_model_rtn(model, bits=4, group_size=32, progress=False)
    assert driver.find_decoder_layers(model)[0] == "model.layers"
    assert linear_weight_bytes(model) < float_bytes / 6  # 4-bit weights plus fp16 scales per 32
