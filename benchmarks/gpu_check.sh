#!/usr/bin/env bash
# One command for a lent GPU machine (no internet; python3 with torch+CUDA, nvcc, pytest preinstalled):
# builds the extension for sm_90a (H100/H200; or takes the one benchmarks/prebuild.sh built, PREBUILT=1), checks
# the Hopper kernel's layout assumptions (wgmma_probe.cu) and the kernel (left out of the later phases if it fails
# there), runs the GPU tests, the benchmark, compute-sanitizer (memcheck and racecheck) on a small script that runs
# every kernel (GPTQ and BCQ), Nsight Compute on the kernels behind the speed targets, the matmul tests without the
# tensor-core kernel, then with whatever time is left a short rerun of the benchmark with the tensor-core kernel at
# batches 1-8 (small_batch_mma/) and the GPTQ quantizer comparison. Everything lands in $RESULTS (default
# ./gpu_results): one log per phase, phases.log with timestamps, bench_cuda.{json,txt,png} (the txt ends with issue
# #4's speed targets, met or missed).
# Where $OUT is set (a machine that copies back only a few files from it), $OUT gets, after every phase, the whole
# of $RESULTS as gpu_check.tar.gz plus phases.log, bench_cuda.txt and bench_cuda.png to read without unpacking.
#
#   bash benchmarks/gpu_check.sh                 # the whole check, 560 seconds at most
#   BUDGET_S=300 SKIP_SANITIZER=1 bash benchmarks/gpu_check.sh
#   PREBUILT=1 bash benchmarks/gpu_check.sh      # use the extension benchmarks/prebuild.sh built, if it still fits
#
# Exit status: 0 when every phase passed, 1 otherwise (the later phases still run).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-./gpu_results}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-560}  # whole script: a 600-second call less a margin for bundling and copy-back
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
mkdir -p "$RESULTS"
[ -n "${OUT:-}" ] && mkdir -p "$OUT"
SANITIZER=$CUDA_HOME/bin/compute-sanitizer
[ -x "$SANITIZER" ] || SANITIZER=compute-sanitizer
status=0

phase() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$RESULTS/phases.log"; }
# The copy in $OUT, refreshed after every phase so that a run stopped from outside still returns what it had.
bundle() {
  [ -n "${OUT:-}" ] || return 0
  tar -czf "$OUT/gpu_check.tar.gz.tmp" -C "$RESULTS" . && mv "$OUT/gpu_check.tar.gz.tmp" "$OUT/gpu_check.tar.gz"
  for f in phases.log bench_cuda.txt bench_cuda.png; do
    [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$OUT/$f"
  done
  return 0
}
# run NAME LIMIT_S CMD...: runs CMD with its output in $RESULTS/NAME.log, records pass/fail and returns CMD's status.
# The limit shrinks to what is left of BUDGET_S, so the whole script never overruns it (a phase with under 15 s left
# is skipped).
run() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - SECONDS - 5))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 15 ]; then
    phase "$name: SKIPPED (budget spent)"
    status=1
    return 1
  fi
  phase "$name: start (limit ${limit}s)"
  local rc=0
  timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then
    phase "$name: passed"
  else
    phase "$name: FAILED (exit $rc; see $RESULTS/$name.log)"
    tail -n 30 "$RESULTS/$name.log"
    status=1
  fi
  bundle
  return $rc
}

rm -f "$RESULTS/phases.log"  # this run's phases only (the other logs are rewritten phase by phase)
phase "start: $(git rev-parse --short HEAD 2>/dev/null || echo no-git) on $(hostname)"
nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || true
# PREBUILT=1: keep the extension benchmarks/prebuild.sh left in gptq_kernels/ (built elsewhere against this torch
# and Python) if it was built from these sources and imports with its CUDA kernels, and skip the build (about two
# minutes, estimated).
if [ -n "${PREBUILT:-}" ] && bash benchmarks/prebuild.sh --check "$PY" > "$RESULTS/prebuilt.log" 2>&1 &&
    "$PY" -c "from gptq_kernels import ops; assert ops.has_kernel('cuda')" >> "$RESULTS/prebuilt.log" 2>&1; then
  phase "build: skipped (PREBUILT=1: the extension in gptq_kernels/ fits these sources, imports with CUDA kernels)"
else
  [ -n "${PREBUILT:-}" ] && phase "PREBUILT=1 but no usable prebuilt extension: $(tail -n 1 "$RESULTS/prebuilt.log")"
  run build 240 "$PY" setup.py -q build_ext --inplace
fi
if [ $status -ne 0 ]; then
  phase "build failed: nothing else can run"
  bundle
  exit 1
fi
# Without a GPU in sight every cuda test would skip, and pytest would pass.
if ! "$PY" -c "import torch; assert torch.cuda.is_available()" > /dev/null 2>&1; then
  phase "torch sees no GPU: the GPU tests below only skip"
  status=1
fi
# The layouts the Hopper kernel assumes, checked one by one on the hardware (a few seconds; says which one differs
# when the kernel fails), then the kernel itself at every bit width. H100/H200 only. A kernel that faults ends its
# process (the CUDA context is lost) and one that hangs holds it to its limit, so where it fails here the later
# phases leave it out, and the rest is still tested and measured.
without_hopper=()
if "$PY" -c "import torch; assert torch.cuda.get_device_capability() == (9, 0)" > /dev/null 2>&1; then
  run wgmma_probe 60 bash -c "$CUDA_HOME/bin/nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -I csrc \
    benchmarks/wgmma_probe.cu -o '$RESULTS/wgmma_probe' && '$RESULTS/wgmma_probe'"
  if ! run hopper_kernel 60 "$PY" benchmarks/sanitize_cuda.py --only-hopper; then
    phase "the Hopper kernel failed its first check: left out of the phases below"
    without_hopper=(--no-hopper)
  fi
fi
# Every test marked cuda: tests/test_cuda.py (GPTQ ops, the Hopper kernel too) and tests/test_bcq_cuda.py
# (binary-coded ops, BCQLinear), verbose so that a run cut short still shows which tests passed. 200 s: never run on
# a GPU yet.
pytest_hopper=()
[ ${#without_hopper[@]} -gt 0 ] && pytest_hopper=(-k "not hopper")
run pytest 200 "$PY" -m pytest -v -m cuda tests --junitxml "$RESULTS/pytest.xml" -p no:cacheprovider \
  --durations=15 "${pytest_hopper[@]}"
# The benchmark before the sanitizers, which only have to pass, so that a tight budget still measures the speed;
# 200 s stay for the sanitizers and the profile. The large shapes go first because the acceptance criteria are
# stated for them.
left=$((BUDGET_S - SECONDS - 200))
[ $left -gt 200 ] && left=200
if [ $left -gt 60 ]; then
  minutes=$(awk "BEGIN { print ($left - 30) / 60 }")
  rm -f "$RESULTS"/bench_cuda.*  # an earlier run's in the same tree
  run bench $left "$PY" benchmarks/bench_cuda.py --max-minutes "$minutes" --out "$RESULTS" "${without_hopper[@]}" \
    --shapes 8192x8192,8192x28672,28672x8192,4096x4096,4096x11008,11008x4096,4096x14336,14336x4096,4096x6144,4096x1024
  # Stopped at its limit, the benchmark leaves the JSON of the shapes it finished (rewritten after each) but no
  # table, plot or targets: render them from the JSON.
  if [ -f "$RESULTS/bench_cuda.json" ] && [ ! -f "$RESULTS/bench_cuda.txt" ]; then
    run bench_report 30 "$PY" benchmarks/bench_cuda.py --report "$RESULTS/bench_cuda.json"
  fi
else
  phase "bench: skipped (only ${left}s left)"
  status=1
fi
if [ -z "${SKIP_SANITIZER:-}" ]; then
  run memcheck 70 "$SANITIZER" --tool memcheck --error-exitcode 1 "$PY" benchmarks/sanitize_cuda.py \
    "${without_hopper[@]}"
  run racecheck 70 "$SANITIZER" --tool racecheck --error-exitcode 1 "$PY" benchmarks/sanitize_cuda.py \
    "${without_hopper[@]}"
fi
# What bounds each kernel behind the speed targets (DRAM throughput, issue slots, stall reasons), read by Nsight
# Compute from the hardware counters: what NOTES_cuda.md can only predict. Clocks left alone (--clock-control none).
NCU=$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1 || echo "$CUDA_HOME/bin/ncu")
run profile 60 "$NCU" --clock-control none --profile-from-start off --nvtx \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  --section SchedulerStats --section WarpStateStats --section LaunchStats --section Occupancy \
  "$PY" benchmarks/profile_cuda.py "${without_hopper[@]}"
# The same matmul tests with the tensor-core kernel switched off: batches of 9 to 32 rows then take the GEMV
# kernel in row tiles, the path that stays when the tensor-core kernel cannot run.
GPTQ_KERNELS_NO_MMA=1 run pytest_no_mma 45 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
  -k "matches_float64 or split_k or split_blocks or non_contiguous"
# The tensor-core kernel at the GEMV kernel's batch sizes (GPTQ_KERNELS_MMA_MIN_ROWS=1), to compare with the
# "gptq N-bit" rows of the main table: decides whether small batches should move to tensor cores.
left=$((BUDGET_S - SECONDS - 40))
if [ $left -gt 40 ]; then
  [ $left -gt 60 ] && left=60
  GPTQ_KERNELS_MMA_MIN_ROWS=1 run bench_small_mma $left "$PY" benchmarks/bench_cuda.py --max-minutes 0.6 \
    --out "$RESULTS/small_batch_mma" --shapes 8192x8192,4096x11008 --batches 1,4,8 --bits 2,4,8 --bcq-planes ""
fi
# Issue-3 comparison on the GPU: one 4096x4096 layer, quantize_weight (CUDA gptq_block) vs the textbook loop.
left=$((BUDGET_S - SECONDS - 10))
if [ $left -gt 30 ]; then
  run bench_gptq $left "$PY" benchmarks/bench_gptq.py --device cuda --repeats 3
fi
phase "done: status $status"
bundle
exit $status
