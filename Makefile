# The README's commands. `make demo` and `make test` each set up .venv on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Without an NVIDIA GPU, pin torch to the CPU wheel; with one, let pip choose the CUDA build.
TORCH_CONSTRAINTS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)
PYTEST_WORKERS ?= 2

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_CONSTRAINTS) -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/transmed demo --out demo

test: setup
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15

bench: setup
	$(VENV)/bin/transmed bench complexity
	$(VENV)/bin/transmed bench dynconv
	$(VENV)/bin/transmed bench training

lint: setup
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) .pytest_cache
