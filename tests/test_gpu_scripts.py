"""The GPU-only scripts, checked on the CPU so that a GPU run does not find their bugs: benchmarks/bench_cuda.py's
report (benchmarks/cuda_report.py; which of issue #4's speed targets a run meets is read off its verdicts, checked
here on made-up measurements) and its contenders' calls (--dry-run), benchmarks/sanitize_cuda.py's and
profile_cuda.py's calls, and the stamp check of benchmarks/prebuild.sh."""
import hashlib
import importlib.machinery
import json
import os
import random
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import cuda_report  # noqa: E402


def make_rows(times):
    """Result rows from {(k, n, batch): {kernel: microseconds}}, with the speedups bench_cuda.py computes."""
    rows = []
    for (k, n, batch), kernels in times.items():
        for kernel, us in kernels.items():
            rows.append({"k": k, "n": n, "batch": batch, "kernel": kernel, "us": us,
                         "speedup_vs_fp16": kernels["cuBLAS fp16"] / us, "weight_gbps": 1.0, "cuda_graph": True})
    random.shuffle(rows)  # the verdicts must not depend on the order of the rows
    return rows


def target(checked, name):
    (found,) = [c for c in checked if c["target"] == name]
    return found


def test_targets_are_judged_at_the_worst_large_shape():
    fp16 = 100.0
    rows = make_rows({
        # Below 8192 x 8192 weights: not a target shape, however slow.
        (4096, 4096, 1): {"cuBLAS fp16": fp16, "gptq 4-bit": fp16 / 1.5},
        (8192, 8192, 1): {"cuBLAS fp16": fp16, "gptq 4-bit": fp16 / 3.8},
        (8192, 28672, 1): {"cuBLAS fp16": fp16, "gptq 4-bit": fp16 / 3.4},
        (28672, 8192, 1): {"cuBLAS fp16": fp16, "gptq 4-bit": fp16 / 3.9},
    })
    c = target(cuda_report.check_targets(rows), "4-bit, batch 1, vs cuBLAS fp16")
    assert c["shapes"] == 3
    assert c["default"][0] == pytest.approx(3.4) and c["default"][1] == "8192x28672"
    assert c["default_holds"] is False
    rows = [r for r in rows if (r["k"], r["n"]) != (8192, 28672)]
    c = target(cuda_report.check_targets(rows), "4-bit, batch 1, vs cuBLAS fp16")
    assert c["shapes"] == 2 and c["default"][1] == "8192x8192" and c["default_holds"] is True


def test_best_contender_is_judged_apart_from_the_default():
    fp16 = 50.0
    rows = make_rows({
        (8192, 8192, 256): {"cuBLAS fp16": fp16, "gptq 3-bit": fp16 / 0.8, "gptq 3-bit wgmma": fp16 / 1.2},
        (8192, 28672, 256): {"cuBLAS fp16": fp16, "gptq 3-bit": fp16 / 0.95, "gptq 3-bit wgmma": fp16 / 1.1,
                             "gptq 3-bit g_idx": fp16 / 1.05, "gptq 4-bit wgmma": fp16 / 2.0,
                             "bcq 3-plane": fp16 / 3.0},
    })
    c = target(cuda_report.check_targets(rows), "3-bit, batch 256, vs cuBLAS fp16")
    assert c["default"][0] == pytest.approx(0.8) and c["default_holds"] is False
    # The best at each shape, then the worst of those: other bit widths and the BCQ kernel do not count.
    assert c["best"][0] == pytest.approx(1.1)
    assert c["best"][1:] == ("8192x28672", "gptq 3-bit wgmma")
    assert c["best_holds"] is True


def test_bounds_and_strictness():
    fp16 = 10.0
    rows = make_rows({
        (8192, 8192, 1024): {"cuBLAS fp16": fp16, "gptq 8-bit": fp16 / 0.9, "torch int4 (bf16)": 4.0,
                             "gptq 4-bit": 4.0},
        (8192, 8192, 1): {"cuBLAS fp16": fp16, "torch int4 (bf16)": 4.0, "gptq 4-bit": 3.0},
    })
    checked = cuda_report.check_targets(rows)
    assert target(checked, "8-bit, batch 1024, vs cuBLAS fp16")["default_holds"] is True  # "not below 0.9x"
    int4 = target(checked, "4-bit, every batch, vs torch int4")
    # "Faster than PyTorch's int4 kernel": a tie at batch 1024 is not faster, whatever batch 1 shows.
    assert int4["default"][0] == pytest.approx(1.0) and int4["default"][1] == "8192x8192 batch 1024"
    assert int4["default_holds"] is False
    # Nothing measured: no verdict rather than a pass.
    c = target(checked, "2-bit, batch 1, vs cuBLAS fp16")
    assert c["default"] is None and c["default_holds"] is None and c["shapes"] == 0


def test_report_renders_a_saved_run_without_a_gpu(tmp_path):
    fp16 = 40.0
    rows = make_rows({
        (8192, 8192, 1): {"cuBLAS fp16": fp16, "gptq 2-bit": fp16 / 5.5, "gptq 4-bit": fp16 / 3.7},
        (8192, 8192, 16): {"cuBLAS fp16": fp16, "gptq 4-bit": fp16 / 3.1},
    })
    run = {"date": "2026-01-01 00:00 UTC", "commit": "abc1234", "device": "made-up GPU", "torch": "x", "cuda": "y",
           "version": "0", "copy_gbps": 4000.0, "group_size": 128, "rounds": 10, "command": "bench_cuda.py",
           "results": rows}
    path = tmp_path / "bench_cuda.json"
    path.write_text(json.dumps(run))
    done = run_script(os.path.join("benchmarks", "bench_cuda.py"), "--report", str(path))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "bench_cuda.txt").read_text()
    assert "made-up GPU" in text and "commit abc1234" in text
    lines = {line.split("  ")[0]: line for line in text.splitlines() if "vs cuBLAS fp16" in line}
    assert "MISS" in lines["2-bit, batch 1, vs cuBLAS fp16"] and "5.50x" in lines["2-bit, batch 1, vs cuBLAS fp16"]
    assert " ok " in lines["4-bit, batch 16, vs cuBLAS fp16"]


def run_script(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_bench_cuda_dry_run_calls_every_contender():
    done = run_script(os.path.join("benchmarks", "bench_cuda.py"), "--dry-run", "--shapes", "576x96,2080x160",
                      "--batches", "1,16,17,64")
    assert done.returncode == 0, done.stderr[-3000:]
    called = {}
    for line in done.stdout.splitlines():
        if line.startswith("dry run "):
            head, names = line.split(": ", 1)
            called[head] = set(names.split(", "))
    assert len(called) == 8
    ours = {f"gptq {bits}-bit" for bits in (2, 3, 4, 8)}
    small = called["dry run K=2080 N=160 batch=16"]
    assert small >= ours | {"cuBLAS fp16", "gptq 2-bit ckpt order", "gptq 4-bit ckpt order", "gptq 3-bit g_idx",
                            "bcq 2-plane", "bcq 3-plane"}
    assert not any("wgmma" in name or "dequant" in name for name in small)
    large = called["dry run K=576 N=96 batch=64"]
    assert large >= ours | {f"gptq {bits}-bit wgmma" for bits in (2, 3, 4, 8)} | {"gptq 4-bit dequant+mm"}
    assert "gptq 3-bit g_idx" not in large


def test_bench_cuda_dry_run_without_the_hopper_kernel():
    # gpu_check.sh passes --no-hopper when the Hopper kernel failed its own check.
    done = run_script(os.path.join("benchmarks", "bench_cuda.py"), "--dry-run", "--no-hopper", "--shapes", "576x96",
                      "--batches", "64")
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("dry run ")]
    assert "gptq 4-bit dequant+mm" in line and "wgmma" not in line


@pytest.mark.parametrize("which", [(), ("--only-hopper",), ("--no-hopper",)])
def test_sanitize_script_runs_on_cpu(which):
    done = run_script(os.path.join("benchmarks", "sanitize_cuda.py"), "cpu", *which)
    assert done.returncode == 0, done.stderr[-3000:]
    hopper = [f"{bits}-bit" for bits in (2, 3, 4, 8) if f"Hopper kernel {bits}-bit done" in done.stdout]
    assert hopper == ([] if which == ("--no-hopper",) else ["2-bit", "3-bit", "4-bit", "8-bit"])
    assert ("all kernels ran" in done.stdout) == (which != ("--only-hopper",))


@pytest.mark.parametrize("hopper", [True, False])
def test_profile_script_runs_on_cpu(hopper):
    done = run_script(os.path.join("benchmarks", "profile_cuda.py"), "cpu", "--shape", "576x96",
                      *(() if hopper else ("--no-hopper",)))
    assert done.returncode == 0, done.stderr[-3000:]
    cases = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("profile_cuda: ")]
    assert cases[0] == "cuBLAS fp16, batch 1"
    assert {f"gptq {bits}-bit, batch 1" for bits in (2, 3, 4, 8)} <= set(cases)
    assert [c for c in cases if "wgmma" in c] == (["gptq 4-bit wgmma, batch 256", "gptq 4-bit wgmma, batch 1024"]
                                                  if hopper else [])


def sources_fingerprint(tree):
    """What benchmarks/prebuild.sh stamps an extension with, recomputed here: sha256 of the `sha256sum` lines of every
    file under csrc/ and of setup.py, in byte order of their paths."""
    paths = sorted([os.path.relpath(os.path.join(d, f), tree) for d, _, files in os.walk(os.path.join(tree, "csrc"))
                    for f in files] + ["setup.py"])
    lines = ""
    for path in paths:
        with open(os.path.join(tree, path), "rb") as f:
            lines += f"{hashlib.sha256(f.read()).hexdigest()}  {path}\n"
    return hashlib.sha256(lines.encode()).hexdigest()


def test_prebuild_check_accepts_only_an_extension_stamped_with_these_sources(tmp_path):
    # gpu_check.sh (PREBUILT=1) skips its build only when this check passes: an extension built from other sources
    # would measure other kernels than the tree's.
    tree = tmp_path / "tree"
    shutil.copytree(os.path.join(ROOT, "csrc"), tree / "csrc")
    shutil.copy(os.path.join(ROOT, "setup.py"), tree / "setup.py")
    (tree / "benchmarks").mkdir()
    shutil.copy(os.path.join(ROOT, "benchmarks", "prebuild.sh"), tree / "benchmarks" / "prebuild.sh")
    (tree / "gptq_kernels").mkdir()
    extension = tree / "gptq_kernels" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])

    def check():
        done = subprocess.run(["bash", str(tree / "benchmarks" / "prebuild.sh"), "--check", sys.executable],
                              capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    assert check() == (1, f"prebuild: no gptq_kernels/{extension.name}\n")
    extension.write_bytes(b"not an extension; the check reads only its stamp")
    rc, said = check()
    assert rc == 1 and "has no stamp" in said
    stamp = extension.with_name(extension.name + ".sources")
    stamp.write_text(sources_fingerprint(tree) + "\n")
    rc, said = check()
    assert rc == 0 and "matches these sources" in said, said
    for edited in ("csrc/cuda/lane_decode.cuh", "setup.py"):
        original = (tree / edited).read_text()
        (tree / edited).write_text(original + "\n")
        rc, said = check()
        assert rc == 1 and "other sources" in said, (edited, said)
        (tree / edited).write_text(original)
    (tree / "csrc" / "core" / "new_helper.h").write_text("#pragma once\n")
    assert check()[0] == 1
