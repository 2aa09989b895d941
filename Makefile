# The two set-up commands of README.md and the install recipe they share.
#   make demo   create/reuse .venv, install, build the demo data, run demo pretraining
#   make test   create/reuse .venv, install, run the style gate (ruff) and the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_data
# HF_HUB_OFFLINE must be set before Python starts: transformers reads it at import time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONPATH := $(CURDIR)

.PHONY: demo test style install check-env clean-venv

install: $(STAMP)

# The stamp depends on the requirement files, so an unchanged .venv is reused and a changed one is updated.
$(STAMP): requirements.txt requirements-nodeps.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch first and alone: 2.13.0 is a local CPU build here; anything newer would pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(MAKE) --no-print-directory check-env
	@touch $(STAMP)

# Fails loudly when the resolved set holds torchvision or a torch other than 2.13.0.
check-env:
	@$(PY) scripts/check_environment.py

# The style gate first (ruff, pyproject.toml settings; `make style` fixes what it can), then the suite.
test: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest tests $(PYTEST_ARGS)

style: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

demo: install
	$(PY) scripts/run_demo.py --out $(DEMO_DIR)

clean-venv:
	rm -rf $(VENV)
