# palijudge: every step of the workflow from the project root. `make help` lists targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

MODEL ?= paligemma-3b-pt-224
SET ?= set1
VALID ?= 10
NAME ?= trained-$(SET)
FILES ?= dataset/$(SET)/train.jsonl dataset/$(SET)/valid.jsonl
MODEL_FAMILY ?= gemma
DATA ?=
ARGS ?=

DEMO_PRESET := $(if $(filter gemma2,$(MODEL_FAMILY)),tiny-gemma2,tiny)

.PHONY: help setup demo test download split train validate params clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: MODEL=$(MODEL) SET=$(SET) VALID=$(VALID) NAME=$(NAME) DATA=... ARGS=..."

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,download]'
	touch $@

setup: $(STAMP) ## create .venv and install palijudge with test extras

demo: $(STAMP) ## the main job on the embedded default: tiny model, generated data (DATA=file.jsonl for yours; MODEL_FAMILY=gemma2)
	$(PY) playground/00-demo.py --preset $(DEMO_PRESET) $(if $(DATA),--data $(DATA)) $(ARGS)

test: $(STAMP) ## run the whole test suite
	$(PY) -m pytest -n auto $(ARGS)

download: $(STAMP) ## fetch MODEL's checkpoint and the tokenizer into cache/ (Kaggle credentials)
	$(PY) playground/01-download_models.py --model $(MODEL) $(ARGS)

split: $(STAMP) ## shuffle dataset/data.jsonl into dataset/SET/{train,valid}.jsonl (VALID examples)
	$(PY) playground/02-shuffle_data.py -v $(VALID) -n $(SET) $(ARGS)

train: $(STAMP) ## evaluate, train on dataset/SET, evaluate, save checkpoints/NAME.npz
	$(PY) playground/03-do_learn.py -d $(SET) -w $(NAME) --model $(MODEL) $(ARGS)

validate: $(STAMP) ## confusion blocks of MODEL (preset or checkpoint) on FILES
	$(PY) playground/04-validate.py --model $(MODEL) $(FILES) $(ARGS)

params: $(STAMP) ## every parameter of MODEL (a preset) by jax.eval_shape, no allocation
	$(PY) playground/00-params.py --model $(MODEL) $(ARGS)

clean: ## remove the virtual environment and caches (keeps cache/, dataset/, checkpoints/)
	rm -rf $(VENV) .pytest_cache
