"""Whole-model GPTQ of SmolLM2-135M-Instruct: quantize_weight against the textbook per-column GPTQ.

Both run inside the same driver (gptq_kernels.quantize_model: same calibration inputs, same Hessians, same
true-sequential order); only the per-layer quantizer differs. The textbook contender is bench_gptq.py's
`textbook_gptq` (the reference implementation's algorithm: Cholesky, inverse, Cholesky again, then a Python
loop over the columns of each block), its result packed into the checkpoint layout. Perplexity on the
held-out text, for several calibration sets, because GPTQ at 3 bits on this small model is sensitive to
rounding: runs whose sums differ only in order can differ by a few points of perplexity, so single numbers
do not rank two quantizers.

    python benchmarks/bench_textbook_model.py                  # 3-bit g128, 3 calibration sets (~10 min, 2 cores)
    python benchmarks/bench_textbook_model.py --bits 4 --sets 1
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gptq import textbook_gptq  # noqa: E402
from common import machine_header  # noqa: E402

import gptq_kernels as gk  # noqa: E402
from gptq_kernels import cli, data, driver  # noqa: E402
from gptq_kernels.quantized import QuantizedWeight  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def textbook_quantize_weight(weight, hessian, *, bits, group_size, sym, damp_percent, scale_dtype, **_):
    """quantize_weight's interface around textbook_gptq (natural column order, no act-order)."""
    grids = []
    result = textbook_gptq(weight.float(), hessian, bits, group_size, sym, percdamp=damp_percent, grids=grids)
    g_idx = torch.arange(weight.shape[1]) // group_size
    scale = torch.stack([s for s, _ in grids], 1)  # [N, groups]
    zero = torch.stack([z for _, z in grids], 1)
    q = torch.round(result / scale[:, g_idx]) + zero[:, g_idx]
    quantized = QuantizedWeight.from_integers(q, scale, zero, g_idx, bits, group_size, sym, scale_dtype)
    quantized.error, quantized.damp_percent = None, damp_percent  # what the driver's report reads
    return quantized


def quantize_textbook(model, calibration, **options) -> None:
    """quantize_model with the textbook per-layer quantizer in place of quantize_weight."""
    saved = driver.prepare_hessian, driver.quantize_weight
    driver.prepare_hessian = lambda hessian, **_: hessian  # the textbook factors the raw Hessian itself
    driver.quantize_weight = textbook_quantize_weight
    try:
        gk.quantize_model(model, calibration, act_group_aware=False, **options)
    finally:
        driver.prepare_hessian, driver.quantize_weight = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--sets", type=int, default=3,
                        help="calibration sets: the demo's windows, then the same number of windows shifted "
                             "along the calibration text (default 3)")
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows per set (default 32)")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per calibration window (default 256)")
    parser.add_argument("--eval-windows", type=int, default=8, help="held-out windows of 512 tokens (default 8)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "bench_textbook_model.md"))
    args = parser.parse_args()

    model, tokenizer = cli.load_model("default")
    stream = data.token_stream(data.calibration_text(), tokenizer)
    held_out = data.token_stream(data.evaluation_text(), tokenizer)

    def perplexity(m) -> float:
        return gk.evaluate_perplexity(m, held_out, seqlen=512, max_windows=args.eval_windows)

    contenders = {
        "textbook GPTQ (per-column loop)": quantize_textbook,
        "quantize_weight, natural order": lambda m, c, **o: gk.quantize_model(m, c, act_group_aware=False, **o),
        "quantize_weight, group-aware order (default)": gk.quantize_model,
    }
    options = dict(bits=args.bits, group_size=args.group_size, progress=False)
    results = {name: [] for name in contenders}
    seconds = {name: [] for name in contenders}
    for index in range(args.sets):
        # Set i starts i / sets of a window later: the same spread over the text, none of the same tokens.
        shift = index * args.seqlen // args.sets
        calibration = data.calibration_samples(stream[shift:], None, args.nsamples, args.seqlen)
        for name, quantize in contenders.items():
            quantized = copy.deepcopy(model)
            start = time.perf_counter()
            quantize(quantized, calibration, **options)
            seconds[name].append(time.perf_counter() - start)
            results[name].append(perplexity(quantized))
            print(f"set {index}, {name}: perplexity {results[name][-1]:.2f} ({seconds[name][-1]:.0f} s)",
                  flush=True)
            del quantized
    rtn = copy.deepcopy(model)
    gk.quantize_model_rtn(rtn, bits=args.bits, group_size=args.group_size, progress=False)
    float_ppl, rtn_ppl = perplexity(model), perplexity(rtn)

    header = machine_header(torch.get_num_threads())
    sets = " | ".join(f"set {i}" for i in range(args.sets))
    lines = [f"# SmolLM2-135M-Instruct, {args.bits}-bit g{args.group_size}: quantize_weight vs textbook GPTQ", "",
             f"- date: {header['date']}", f"- commit: {header['commit']}", f"- machine: {header['cpu']}",
             f"- command: `python benchmarks/bench_textbook_model.py --bits {args.bits} --group-size "
             f"{args.group_size} --sets {args.sets}`", "",
             f"Same driver, calibration sets of {args.nsamples} x {args.seqlen} tokens (set i: the demo's windows "
             f"shifted by i/{args.sets} of a window), perplexity on {args.eval_windows} x 512 held-out tokens. "
             f"Float32: {float_ppl:.2f}; round-to-nearest: {rtn_ppl:.2f}.", "",
             f"| quantizer | {sets} | mean | quantize time (s, median) |",
             "|---|" + "---|" * (args.sets + 2)]
    for name, values in results.items():
        cells = " | ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {name} | {cells} | {statistics.mean(values):.2f} | {statistics.median(seconds[name]):.0f} |")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
