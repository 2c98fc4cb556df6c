# Set-up and the two jobs of the README, on a fresh machine:
#   make demo    -> builds everything, streams a captioned toy-world video from the shipped
#                   Stream-R1 student on the CPU (mp4, GIF, contact sheet in toy_demo/)
#   make test    -> builds everything, runs the test suite
# and: make bench (the kernel benchmark suite), make compare (the toy world's comparison).
# The virtualenv is created here; torch comes from the wheel on local disk where there is one
# (a CUDA 13.0 build, so that the CUDA kernels compile and link even on a machine without a GPU).
# On a machine whose Python already has torch (the GPU machine), use `make SYSTEM=1 ...`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
SYSTEM ?= 0
# Where a CUDA toolkit is installed, building the CUDA kernels is required (a CUDA compile
# error then fails the build, and the tests check that the kernels are registered).
WITH_CUDA ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),ON,AUTO)
export STREAM_R1_FAST_WITH_CUDA := $(WITH_CUDA)

ifeq ($(SYSTEM),1)
  PY := $(PYTHON)
  STAMP := build/.installed-system
else
  PY := $(VENV)/bin/python
  STAMP := $(VENV)/.installed
endif

SOURCES := pyproject.toml CMakeLists.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: install test bench demo compare clean

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

ifeq ($(SYSTEM),1)
$(STAMP): $(SOURCES)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	@mkdir -p $(dir $@) && touch $@
else
$(STAMP): $(VENV)/bin/python $(SOURCES)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" numpy "scikit-build-core>=0.10" "cmake>=3.26" ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[test,cupy,serve,train]"
	@touch $@
endif

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/run_all.py

demo: $(STAMP)
	$(PY) -m stream_r1_fast.toy.demo --out toy_demo

compare: $(STAMP)
	$(PY) scripts/toy/compare.py --seeds 0 1 2 --jobs 3

clean:
	rm -rf build $(VENV) stream_r1_fast/_C*.so
