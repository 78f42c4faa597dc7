#!/usr/bin/env bash
# One command for a lent GPU machine (no internet; python3 with torch+CUDA, nvcc, pytest preinstalled):
# builds the extension for sm_90, runs the GPU tests, compute-sanitizer (memcheck and racecheck) on a small
# script that runs every kernel (GPTQ and BCQ), then the benchmark with whatever time is left, a short rerun of it
# with the tensor-core kernel at batches 1-8 (small_batch_mma/) and the GPTQ quantizer comparison. Everything lands
# in $OUT (default ./gpu_results): one log per phase, phases.log with timestamps, bench_cuda.{json,txt,png}.
#
#   bash benchmarks/gpu_check.sh                 # the whole check, about 9 minutes at most
#   BUDGET_S=300 SKIP_SANITIZER=1 bash benchmarks/gpu_check.sh
#
# Exit status: 0 when every phase passed, 1 otherwise (the later phases still run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_results}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}  # whole script; the 10-minute call limit minus a margin for start and copy-back
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
mkdir -p "$OUT"
SANITIZER=$CUDA_HOME/bin/compute-sanitizer
[ -x "$SANITIZER" ] || SANITIZER=compute-sanitizer
status=0

phase() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/phases.log"; }
# run NAME LIMIT_S CMD...: runs CMD with its output in $OUT/NAME.log and records pass/fail. The limit shrinks to
# what is left of BUDGET_S, so the whole script never overruns it (a phase with under 15 s left is skipped).
run() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - SECONDS - 5))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 15 ]; then
    phase "$name: SKIPPED (budget spent)"
    status=1
    return
  fi
  phase "$name: start (limit ${limit}s)"
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    phase "$name: passed"
  else
    phase "$name: FAILED (exit $?; see $OUT/$name.log)"
    tail -n 30 "$OUT/$name.log"
    status=1
  fi
}

phase "start: $(git rev-parse --short HEAD 2>/dev/null || echo no-git) on $(hostname)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
run build 240 "$PY" setup.py -q build_ext --inplace
if [ $status -ne 0 ]; then
  phase "build failed: nothing else can run"
  exit 1
fi
# Every test marked cuda: tests/test_cuda.py (GPTQ ops) and tests/test_bcq_cuda.py (binary-coded ops, BCQLinear).
run pytest 240 "$PY" -m pytest -q -m cuda tests --junitxml "$OUT/pytest.xml" -p no:cacheprovider
# The same matmul tests with the tensor-core kernel switched off: batches of 9 to 32 rows then take the GEMV
# kernel in row tiles, the path that stays when the tensor-core kernel cannot run.
GPTQ_KERNELS_NO_MMA=1 run pytest_no_mma 60 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
  -k "matches_float64 or split_k or split_blocks or non_contiguous"
if [ -z "${SKIP_SANITIZER:-}" ]; then
  run memcheck 100 "$SANITIZER" --tool memcheck --error-exitcode 1 "$PY" benchmarks/sanitize_cuda.py
  run racecheck 100 "$SANITIZER" --tool racecheck --error-exitcode 1 "$PY" benchmarks/sanitize_cuda.py
fi
# The benchmark gets the rest of the budget, minus time to write its results; the large shapes go first
# because the acceptance criteria are stated for them.
left=$((BUDGET_S - SECONDS - 130))  # 60 s of it for bench_small_mma, 30 s for bench_gptq below
if [ $left -gt 60 ]; then
  minutes=$(awk "BEGIN { print ($left - 30) / 60 }")
  run bench $left "$PY" benchmarks/bench_cuda.py --max-minutes "$minutes" --out "$OUT" \
    --shapes 8192x8192,8192x28672,28672x8192,4096x4096,4096x11008,11008x4096,4096x14336,14336x4096,4096x6144,4096x1024
else
  phase "bench: skipped (only ${left}s left)"
fi
# The tensor-core kernel at the GEMV kernel's batch sizes (GPTQ_KERNELS_MMA_MIN_ROWS=1), to compare with the
# "gptq N-bit" rows of the main table: decides whether small batches should move to tensor cores.
left=$((BUDGET_S - SECONDS - 40))
if [ $left -gt 40 ]; then
  [ $left -gt 60 ] && left=60
  GPTQ_KERNELS_MMA_MIN_ROWS=1 run bench_small_mma $left "$PY" benchmarks/bench_cuda.py --max-minutes 0.6 \
    --out "$OUT/small_batch_mma" --shapes 8192x8192,4096x11008 --batches 1,4,8 --bits 2,4,8 --bcq-planes ""
fi
# Issue-3 comparison on the GPU: one 4096x4096 layer, quantize_weight (CUDA gptq_block) vs the textbook loop.
left=$((BUDGET_S - SECONDS - 10))
if [ $left -gt 30 ]; then
  run bench_gptq $left "$PY" benchmarks/bench_gptq.py --device cuda --repeats 3
fi
phase "done: status $status"
exit $status
