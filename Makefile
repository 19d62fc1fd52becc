# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench fuzz-long setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scanco-units demo -o demo-output

test: $(STAMP)
	$(PY) -m pytest -q

# make bench BENCH_ARGS="--size 1G,4G --repeat 3"   (bench/bench.py --help for the options)
BENCH_ARGS ?= --size 1G --repeat 3
bench: $(STAMP)
	$(PY) bench/bench.py $(BENCH_ARGS)

fuzz-long: $(STAMP)
	SCANCO_FUZZ_EXAMPLES=200000 $(PY) -m pytest -q Testing/test_fuzz.py

clean:
	rm -rf $(VENV) demo-output bench-output
