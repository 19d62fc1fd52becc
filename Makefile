# Two commands on a fresh machine: `make demo` (the project and the extra the demo uses: matplotlib for
# its QC picture) and `make test` (adds the test stack: pytest, ITK, aimio, slicer-core, PySide6...).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# demo: the project with the report extra only; test: the whole test stack (pins in pyproject.toml)
DEMO_STAMP := $(VENV)/.demo-installed-stamp
STAMP      := $(VENV)/.installed-stamp

.PHONY: demo test bench bench-slicer fuzz-long setup setup-demo clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[report]"
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP) $(DEMO_STAMP)

setup-demo: $(DEMO_STAMP)

setup: $(STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/scanco-units demo -o demo-output

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q
	$(MAKE) test-oldest

# make bench BENCH_ARGS="--size 1G,4G --repeat 3"   (bench/bench.py --help for the options)
BENCH_ARGS ?= --size 1G --repeat 3
SLICER_BENCH_ARGS ?= --size 1G --repeat 3
bench: $(STAMP)
	$(PY) bench/bench.py $(BENCH_ARGS)
	$(PY) bench/slicer_load.py $(SLICER_BENCH_ARGS)

# loading into a headless Slicer scene (slicer-core) against itk.imread of the same file
bench-slicer: $(STAMP)
	$(PY) bench/slicer_load.py $(SLICER_BENCH_ARGS)

# random exploration: a new mutation seed (printed; SCANCO_FUZZ_SEED=N replays it) and the random
# hypothesis profile (a failure prints its @reproduce_failure blob)
fuzz-long: $(STAMP)
	@seed=$${SCANCO_FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "fuzz-long: SCANCO_FUZZ_SEED=$$seed HYPOTHESIS_PROFILE=explore"; \
	SCANCO_FUZZ_EXAMPLES=200000 SCANCO_FUZZ_SEED=$$seed HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q Testing/formats/test_fuzz.py

# the whole suite on the oldest supported stack (Slicer 5.8: Python 3.9 where pyenv or the system has it,
# numpy 1.26.4) with numpy, pytest and hypothesis alone (the test-oldest extra): the core tests pass, the
# tests of optional packages skip
PYTHON_OLDEST ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.9*/bin/python3.9) $(shell command -v python3.9) $(PYTHON))
VENV_OLDEST := .venv-np126
OLDEST_STAMP := $(VENV_OLDEST)/.installed-stamp

$(OLDEST_STAMP): pyproject.toml
	test -x $(VENV_OLDEST)/bin/python || $(PYTHON_OLDEST) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install --quiet -e ".[test-oldest]"
	touch $(OLDEST_STAMP)

test-oldest: $(OLDEST_STAMP)
	@$(VENV_OLDEST)/bin/python -c "import sys, numpy; print('test-oldest: Python', sys.version.split()[0], 'numpy', numpy.__version__)"
	$(VENV_OLDEST)/bin/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) demo-output bench-output
