#!/usr/bin/env bash
# Builds the extension on a machine without a GPU for a lent GPU machine, so that gpu_check.sh spends its device
# time on measurements instead of a build (~2 minutes there, estimated), and stamps it with the sources it was
# built from, so that gpu_check.sh (PREBUILT=1) never runs an extension built from other sources than the tree it
# runs in.
#
#   bash benchmarks/prebuild.sh                  # against torch 2.11 / Python 3.12, the H200 machines' so far
#   PREBUILD_PYTHON=/path/python bash benchmarks/prebuild.sh    # against that interpreter's torch
#   bash benchmarks/prebuild.sh --check PYTHON   # exit 0 when gptq_kernels/ holds PYTHON's extension, stamped
#                                                # with these sources (what gpu_check.sh asks before it skips the build)
#
# The build goes into the working tree: next to .venv's extension (the file name carries the Python version, and
# so does setuptools' build folder), incremental as usual. It leaves gptq_kernels/_C<suffix>.so stripped of debug
# sections (38 MiB at commit d68c3a6; the device tool carries 64 MiB at most; -lineinfo stays) and
# gptq_kernels/_C<suffix>.so.sources, and prints the device-tool call that carries both.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the stamp records: every file under csrc/ and setup.py (which holds the compile flags), by content.
sources_fingerprint() {
  { find csrc -type f -print0; printf 'setup.py\0'; } | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum |
    cut -d' ' -f1
}

# The path of the extension PYTHON imports from gptq_kernels/ (its ABI suffix, e.g. .cpython-312-x86_64-linux-gnu.so).
extension_path() {
  echo "gptq_kernels/_C$("$1" -c 'import importlib.machinery as m; print(m.EXTENSION_SUFFIXES[0])')"
}

if [ "${1:-}" = "--check" ]; then
  [ $# -eq 2 ] || { echo "usage: $0 --check PYTHON" >&2; exit 2; }
  so=$(extension_path "$2")
  if [ ! -f "$so" ]; then
    echo "prebuild: no $so" >&2
    exit 1
  fi
  if [ ! -f "$so.sources" ]; then
    echo "prebuild: $so has no stamp ($so.sources): not built by benchmarks/prebuild.sh" >&2
    exit 1
  fi
  if [ "$(cat "$so.sources")" != "$(sources_fingerprint)" ]; then
    echo "prebuild: $so was built from other sources than these (csrc/ or setup.py changed since)" >&2
    exit 1
  fi
  echo "prebuild: $so matches these sources"
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--check PYTHON]" >&2; exit 2; }

PY=${PREBUILD_PYTHON:-}
if [ -z "$PY" ]; then
  venv=${PREBUILD_VENV:-/tmp/gptq_prebuild_venv}
  if [ ! -x "$venv/bin/python" ]; then
    # Python 3.12 itself: on PATH, or one of pyenv's (whose shim answers only where 3.12 is selected).
    base=
    for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
      if "$candidate" -c "" 2>/dev/null; then base=$candidate; break; fi
    done
    [ -n "$base" ] || { echo "prebuild: no Python 3.12 found (set PREBUILD_PYTHON)" >&2; exit 1; }
    "$base" -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.11.0 numpy ninja pybind11 setuptools
  fi
  PY=$venv/bin/python
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$PY" -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is a CPU-only build'"

before=$(sources_fingerprint)
"$PY" setup.py -q build_ext --inplace
if [ "$(sources_fingerprint)" != "$before" ]; then
  echo "prebuild: csrc/ or setup.py changed during the build; run it again" >&2
  exit 1
fi
so=$(extension_path "$PY")
strip --strip-debug "$so"
echo "$before" > "$so.sources"
echo "prebuild: $so ($(($(stat -c %s "$so") >> 20)) MiB) for $("$PY" -c 'import sys, torch
print("torch", torch.__version__, "and Python", sys.version.split()[0])')"
echo "On the GPU machine (device tool): carry [\"$so\", \"$so.sources\"],"
echo "  command: PREBUILT=1 OUT=\$OUT bash benchmarks/gpu_check.sh   (timeout_s 600)"
