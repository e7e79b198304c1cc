# Every target sets itself up: a virtualenv in .venv with torch (CPU build) and this package.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
DATA   ?=
STAMP  := $(VENV)/.installed

.PHONY: demo test setup clean

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

clean:
	rm -rf runs mlflow.db mlartifacts
