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

test: setup system-deps
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15

bench: setup
	$(VENV)/bin/transmed bench complexity
	$(VENV)/bin/transmed bench dynconv
	$(VENV)/bin/transmed bench training

lint: setup
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) .pytest_cache

# Orthanc and its DICOMweb plugin (Debian packages) for the DICOM node's end-to-end tests, which
# start their own private Orthanc, and chromium for the viewer's browser tests. Installed only
# when missing, with apt-get, as root or with passwordless sudo; otherwise a note (those tests
# then skip, or fail under .ci/run). Orthanc's packaged system daemon is not needed: it is
# stopped and disabled right after installing.
ORTHANC_PLUGIN ?= /usr/share/orthanc/plugins/libOrthancDicomWeb.so
.PHONY: system-deps
system-deps:
	@if { command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } && [ -f $(ORTHANC_PLUGIN) ]; then \
		:; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: no apt-get here; install Orthanc and its DICOMweb plugin yourself"; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
		else echo "system-deps: need root or sudo to apt-get install orthanc orthanc-dicomweb"; exit 0; fi; \
		{ $$SUDO apt-get update -qq && \
		  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb && \
		  { $$SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true; }; } || \
		echo "system-deps: installing Orthanc failed; its tests skip (fail under .ci/run)"; \
	fi
	@# Debian's chromium for the viewer's browser tests (Playwright drives it; no browser download).
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then \
		:; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "system-deps: no apt-get here; install chromium yourself"; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
		else echo "system-deps: need root or sudo to apt-get install chromium"; exit 0; fi; \
		{ $$SUDO apt-get update -qq && \
		  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "system-deps: installing chromium failed; browser tests skip (fail under .ci/run)"; \
	fi
