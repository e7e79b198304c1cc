# Every target sets itself up: a virtualenv in .venv with torch (CPU build) and this package.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
DATA   ?=
STAMP  := $(VENV)/.installed

TIMM_VENV  ?= .venv-timm
TIMM_TORCH ?= torch==2.14.1 torchvision==0.29.1
TIMM_STAMP := $(TIMM_VENV)/.installed

.PHONY: demo test setup clean test-timm

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## make demo [DATA=<MVTec-layout folder>]: embed -> train -> register -> score -> evaluate
demo: $(STAMP)
	$(PY) -m dinoar_ray.cli demo --config configs/demo.yaml $(if $(DATA),--data $(DATA))

## make test: the test suite (tiny random-init DINOv3, local Ray)
test: $(STAMP)
	$(PY) -m pytest -q tests

# The timm extra in its own virtualenv: timm imports torchvision, and PyPI's torchvision does not load
# beside the CPU build of torch, so this pairs the torch and torchvision releases that go together.
$(TIMM_STAMP): pyproject.toml
	python3 -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/python -m pip install -q --upgrade pip
	$(TIMM_VENV)/bin/python -m pip install -q $(TIMM_TORCH)
	$(TIMM_VENV)/bin/python -m pip install -q -e '.[dev,timm]'
	touch $(TIMM_STAMP)

## make test-timm: the control-backbone tests with timm installed (builds .venv-timm)
test-timm: $(TIMM_STAMP)
	$(TIMM_VENV)/bin/python -m pytest -q tests/test_cnn_backbone.py

clean:
	rm -rf runs mlflow.db mlartifacts mlruns
