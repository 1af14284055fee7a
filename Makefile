SHELL := bash
.SHELLFLAGS := -eo pipefail -c

# Two entry points for a fresh clone: `make demo` and `make test`. Both build .venv/ first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Install torch on its own first: a bare "torch" requirement would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/emsr demo

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: setup
	$(PY) bench/model_throughput.py

clean:
	rm -rf $(VENV) demo-output experiments-output .pytest_cache
