# Two entry points for a fresh machine: `make demo` and `make test`.
# Each builds .venv from requirements.txt first (only when requirements change), with this
# package installed in it, editable (its console scripts: pyproject.toml); `make test` adds the
# test-only requirements-test.txt (CPU torch + diffusers / transformers references).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# The folder of this Makefile (also when make runs in a folder of links to it).
PROJECT := $(patsubst %/,%,$(dir $(realpath $(firstword $(MAKEFILE_LIST)))))

.PHONY: demo test app venv venv-gpu venv-tpu clean

venv: $(STAMP)

# The pinned requirements, then the package itself without dependencies (pip resolves nothing
# twice and moves no pin); setuptools' notice about editable installs of a flat layout is muted.
$(STAMP): requirements.txt $(PROJECT)/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet --no-deps -e "$(PROJECT)"
	touch $(STAMP)

# Accelerator builds of the pinned jax in the same .venv (README "Installing for GPUs and TPUs"):
# the CUDA plugin with pip's CUDA libraries (CUDA=12, or 13 for a CUDA 13 driver), or libtpu.
# Each ends by checking that jax sees the accelerator.
JAX_VERSION := $(shell sed -n 's/^jax==//p' requirements.txt)
CUDA ?= 12

venv-gpu: $(STAMP)
	$(PY) -m pip install --quiet "jax[cuda$(CUDA)]==$(JAX_VERSION)"
	$(PY) -m imagebrush_jax.hardware --expect gpu

venv-tpu: $(STAMP)
	$(PY) -m pip install --quiet "jax[tpu]==$(JAX_VERSION)"
	$(PY) -m imagebrush_jax.hardware --expect tpu

# Resolved together with requirements.txt, so the test packages never move a runtime pin.
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $(TEST_STAMP)

# Two workers (pytest-xdist), a test file per worker at a time (module fixtures are built once),
# handed out in collection order: tests/conftest.py puts the longest files first.
TEST_WORKERS ?= 2

test: $(TEST_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

clean:
	rm -rf runs .pytest_cache

# The CPU demo (README "Quickstart on a laptop"): train configs/cpu_demo.py into runs/demo with a progress line,
# then evaluate on fresh grids and write runs/demo/{metrics.json, report.png, accuracy_curve.png}.
# A finished runs/demo resumes at its last checkpoint (and stops at once); `make clean` restarts.
# DEMO_FLAGS: extra --config.key=value overrides of the training run (the tests make it tiny).
DEMO_DIR ?= runs/demo
DEMO_EVAL_GRIDS ?= 240
DEMO_FLAGS ?=

demo: $(STAMP)
	$(PY) -m imagebrush_jax.train --config configs/cpu_demo.py --workdir $(DEMO_DIR) $(DEMO_FLAGS)
	$(PY) -m imagebrush_jax.evaluate --workdir $(DEMO_DIR) --num_examples $(DEMO_EVAL_GRIDS) \
	  --output $(DEMO_DIR)/metrics.json --no_cycle
	$(PY) -m imagebrush_jax.demo_report --workdir $(DEMO_DIR)

# The web editor (docs/inference.md "The web editor") on the demo run: http://127.0.0.1:7860.
# APP_FLAGS: more flags of imagebrush_jax.app (--port, --host, --examples ...).
APP_FLAGS ?=

app: $(STAMP)
	$(PY) -m imagebrush_jax.app --workdir $(DEMO_DIR) $(APP_FLAGS)
