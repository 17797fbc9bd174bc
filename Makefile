# All set-up lives here: a fresh machine needs only `make test` or `make demo`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTSTAMP := $(VENV)/.ext-built
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: venv tf-venv test lint demo bench docs clean

venv: $(STAMP) $(EXTSTAMP)

$(STAMP): pyproject.toml $(PLUGINS) Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned: pip takes the local CPU wheel for exactly this version.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test,docs,bench,progress,cli]"
	for p in $(dir $(PLUGINS)); do $(BIN)/pip install -q -e "$$p[test]" || exit 1; done
	touch $(STAMP) $(EXTSTAMP)

# The compiled helpers (setup.py): an editable install does not rebuild them when their source changes.
$(EXTSTAMP): $(STAMP) ckptcore/restore/_plan_fast.pyx ckptcore/save/_save_fast.pyx setup.py
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(EXTSTAMP)

# The oracle for TensorFlow's checkpoint format: real TensorFlow, in its own environment (never in
# .venv: ckptcore must read and write TF checkpoints without it). ~1.6 GB; tests/test_tensorflow_live.py
# runs it as a subprocess.
TFVENV := .venv-tf
TFSTAMP := $(TFVENV)/.installed

tf-venv: $(TFSTAMP)

$(TFSTAMP):
	$(PY) -m venv $(TFVENV)
	$(TFVENV)/bin/pip install -q --upgrade pip
	$(TFVENV)/bin/pip install -q "tensorflow-cpu==2.21.0"
	touch $(TFSTAMP)

test: venv lint tf-venv
	$(BIN)/python -m pytest -q

# ruff and mypy read their settings from pyproject.toml.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: venv
	$(BIN)/python examples/demo.py

bench: venv
	$(BIN)/python -m benchmarks

docs: venv
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) site
