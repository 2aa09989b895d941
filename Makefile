# The two set-up commands of README.md and the install recipe they share.
#   make demo   create/reuse .venv, install, build the demo data, run demo pretraining
#   make test   create/reuse .venv and .venv-label (MONAI Label), install, run the style gate (ruff) and the suite
#   make ablation  the component ablation on the demo data of `make demo` (docs/results/demo_ablation.md)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_data
LABEL_VENV := .venv-label
LABEL_PY := $(LABEL_VENV)/bin/python
LABEL_STAMP := $(LABEL_VENV)/.installed
LABEL_SHIM := $(LABEL_VENV)/torchvision-shim
# HF_HUB_OFFLINE must be set before Python starts: transformers reads it at import time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONPATH := $(CURDIR)

.PHONY: demo ablation test style install check-env clean-venv label-env clean-label-env

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

# The MONAI Label side environment (requirements-label.txt says why it is separate). tests/test_monai_label_server.py
# starts a real server from it; `make test` builds it first (CI runs a fresh clone).
label-env: $(LABEL_STAMP)

$(LABEL_STAMP): requirements-label.txt Makefile
	@test -x $(LABEL_PY) || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_PY) -m pip install --quiet --upgrade pip
	$(LABEL_PY) -m pip install --quiet torch==2.13.0
	$(LABEL_PY) -m pip install --quiet monai==1.6.1
	$(LABEL_PY) -m pip install --quiet --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
	$(LABEL_PY) -m pip install --quiet -r requirements-label.txt
	@# monailabel/transform/post.py imports torchvision.utils (make_grid, save_image: scribbles / SAM2 paths only) at
	@# module level and BundleInferTask imports that module: a stub package, put on PYTHONPATH for the server only.
	mkdir -p $(LABEL_SHIM)/torchvision
	printf '' > $(LABEL_SHIM)/torchvision/__init__.py
	printf 'def make_grid(*args, **kwargs):\n    raise NotImplementedError("torchvision shim")\n\n\nsave_image = make_grid\n' \
		> $(LABEL_SHIM)/torchvision/utils.py
	PYTHONPATH=$(LABEL_SHIM) $(LABEL_PY) -c "import monailabel.main, monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle"
	@touch $(LABEL_STAMP)

clean-label-env:
	rm -rf $(LABEL_VENV)

# Fails loudly when the resolved set holds torchvision or a torch other than 2.13.0.
check-env:
	@$(PY) scripts/check_environment.py

# The style gate first (ruff, pyproject.toml settings; `make style` fixes what it can), then the suite.
test: install label-env
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest tests $(PYTEST_ARGS)

style: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

demo: install
	$(PY) scripts/run_demo.py --out $(DEMO_DIR)

# Variants a-g x pretraining seeds 0 and 1 (scripts/ablate.py; 86 min on 2 CPU cores); finished cells under
# runs/ablation are reused, so a stopped run continues.
ablation: install
	@test -f $(DEMO_DIR)/manifests/grounding.json || { echo "$(DEMO_DIR)/manifests is missing: run make demo first"; exit 2; }
	$(PY) scripts/ablate.py --dataset_dir $(DEMO_DIR)

clean-venv:
	rm -rf $(VENV)
