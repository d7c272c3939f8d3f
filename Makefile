# palijudge: every step of the workflow from the project root. `make help` lists targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Which jax build the environment gets: cpu, or cuda12 / cuda13 (NVIDIA GPUs: jax's own CUDA
# wheels, `jax[cuda12]`). Remembered in $(VENV)/.accel; on first setup, cuda12 where an NVIDIA
# driver is present, else cpu. `make setup ACCEL=cuda12` switches an existing environment.
ACCELS := cpu cuda12 cuda13
ACCEL ?= $(or $(shell cat $(VENV)/.accel 2>/dev/null),$(if $(wildcard /proc/driver/nvidia/version),cuda12,cpu))
comma := ,
# An environment marked .frozen (the container's) is used as it is.
STAMP := $(if $(wildcard $(VENV)/.frozen),$(VENV)/.frozen,$(VENV)/.installed-$(ACCEL))

MODEL ?= paligemma-3b-pt-224
SET ?= set1
VALID ?= 10
NAME ?= trained-$(SET)
FILES ?= dataset/$(SET)/train.jsonl dataset/$(SET)/valid.jsonl
MODEL_FAMILY ?= gemma
DATA ?=
# The folder a data file's image paths start from (13-inference's -i); empty: the one rule
# (the split's record, else dataset/ for a file inside it, else the file's folder).
IMAGES ?=
ARGS ?=
BATCH ?= 4
ACCUM ?= 1
TRAINABLE ?= attn
BUDGET ?= 12
FOLDS ?= 5
TRIALS ?= 1
SORT ?= score
CMD ?=
OUT ?=
KEEP ?= errors
QUANTIZE ?=
Q := $(if $(QUANTIZE),--quantize $(QUANTIZE))

DEMO_PRESET := $(if $(filter gemma2,$(MODEL_FAMILY)),tiny-gemma2,tiny)

.PHONY: help setup demo test hostile test-fast download split train validate params plan bench bench-gpu \
	random-checkpoint folds cv tune ask tell status report docker-build docker-run prompts infer \
	aggregate filter clean audit audit-bench compare

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
	  '{n[NR] = $$1; h[NR] = $$2; if (length($$1) > w) w = length($$1)} \
	   END {for (i = 1; i <= NR; i++) printf "  make %-" w "s  %s\n", n[i], h[i]}'
	@echo "  variables: MODEL=$(MODEL) SET=$(SET) VALID=$(VALID) NAME=$(NAME) ACCEL=$(ACCEL) DATA=... IMAGES=... ARGS=..."
	@echo "  QUANTIZE=int8|int4|nf4 (demo, train, validate, infer, plan, tune, ask): quantized frozen weights"

$(VENV)/.installed-%: pyproject.toml
	@case " $(ACCELS) " in *" $* "*) ;; *) echo "ACCEL=$*: use one of $(ACCELS)" >&2; exit 2;; esac
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(filter cpu,$*),-$(PY) -m pip uninstall -q -y jax-cuda12-plugin jax-cuda12-pjrt jax-cuda13-plugin jax-cuda13-pjrt 2>/dev/null)
	$(PY) -m pip install -q -e '.[test,download,quantize$(if $(filter-out cpu,$*),$(comma)$*)]'
	rm -f $(VENV)/.installed-*
	echo $* > $(VENV)/.accel
	@$(PY) -c "import jax; print(f'jax {jax.__version__} ($*) runs on: {jax.default_backend()}, {len(jax.devices())} device(s)')"
	touch $@

setup: $(STAMP) ## create .venv with palijudge and test extras (ACCEL=cpu|cuda12|cuda13; default: cuda12 on an NVIDIA host)

demo: $(STAMP) ## the main job on the embedded default: tiny model, generated data (DATA=file.jsonl for yours; MODEL_FAMILY=gemma2)
	$(PY) playground/00-demo.py --preset $(DEMO_PRESET) $(if $(DATA),--data $(DATA)) $(Q) $(ARGS)

test: $(STAMP) ## run the whole test suite
	$(PY) -m pytest -n auto $(ARGS)

hostile: $(STAMP) ## the hostile corpus: bad input, misuse, kills inside writes (tests/hostile; in make test too)
	$(PY) -m pytest -n auto tests/hostile $(ARGS)

test-fast: $(STAMP) ## the tests without the whole-script runs (-m "not script")
	$(PY) -m pytest -n auto -m "not script" $(ARGS)

download: $(STAMP) ## fetch MODEL's checkpoint and the tokenizer into cache/ (Kaggle credentials)
	$(PY) playground/01-download_models.py --model $(MODEL) $(ARGS)

split: $(STAMP) ## shuffle dataset/data.jsonl (or DATA) into dataset/SET/{train,valid}.jsonl (VALID examples)
	$(PY) playground/02-shuffle_data.py -v $(VALID) -n $(SET) $(if $(DATA),--data $(DATA)) $(if $(IMAGES),--root $(IMAGES)) $(ARGS)

train: $(STAMP) ## evaluate, train on dataset/SET, evaluate, save checkpoints/NAME.npz
	$(PY) playground/03-do_learn.py -d $(SET) -w $(NAME) --model $(MODEL) $(Q) $(ARGS)

validate: $(STAMP) ## confusion blocks of MODEL (preset or checkpoint) on FILES
	$(PY) playground/04-validate.py --model $(MODEL) $(FILES) $(Q) $(ARGS)

params: $(STAMP) ## every parameter of MODEL (a preset) by jax.eval_shape, no allocation
	$(PY) playground/00-params.py --model $(MODEL) $(ARGS)

prompts: $(STAMP) ## rank prompts on FILES: ARGS='--prompt "..." --prompt "..."' or '--prompts FILE'
	$(PY) playground/05-rank_prompts.py --model $(MODEL) $(FILES) $(ARGS)

infer: $(STAMP) ## one prediction row per example: MODEL DATA=data.tsv IMAGES=DIR OUT=out.tsv (resumable)
	$(PY) playground/13-inference.py --model $(MODEL) -d $(DATA) $(if $(IMAGES),-i $(IMAGES)) -o $(OUT) $(Q) $(ARGS)

aggregate: $(STAMP) ## Aggregate blocks of prediction FILES
	$(PY) playground/14-validate_outtsv.py $(FILES) $(ARGS)

filter: $(STAMP) ## next training set from predictions: FILES KEEP=errors OUT=dataset/next.tsv
	$(PY) playground/16-filter_train_data.py $(FILES) --keep $(KEEP) -o $(OUT) $(ARGS)

compare: $(STAMP) ## two models on the same FILES: A=CKPT|base|PRED B=... (flips, McNemar, paired intervals)
	$(PY) playground/17-compare.py -a $(A) -b $(B) $(FILES) $(if $(filter-out %.tsv %.jsonl,$(A) $(B)),--model $(MODEL)) $(ARGS)

plan: $(STAMP) ## memory plan of a recipe without allocating: MODEL BATCH ACCUM TRAINABLE BUDGET (GiB) QUANTIZE
	$(PY) playground/10-plan.py --model $(MODEL) --batch $(BATCH) --accum $(ACCUM) \
	  --trainable $(TRAINABLE) --budget $(BUDGET) --fsdp-table $(Q) $(ARGS)

bench: $(STAMP) ## speed benchmark, ours vs the colab's plain approach (JSON lines; see BENCHMARKS.md)
	$(PY) playground/08-bench.py $(ARGS)

bench-gpu: $(STAMP) ## full-size models on the GPU: step, MFU, 12 GiB fit, scoring (small config on CPU)
	$(PY) playground/08-bench.py --gpu $(ARGS)

random-checkpoint: $(STAMP) ## a random full-size MODEL checkpoint in the Kaggle layout (cache/random/)
	$(PY) playground/11-write_random_checkpoint.py --model $(MODEL) $(ARGS)

folds: $(STAMP) ## FOLDS cross-validation folds of dataset/data.jsonl (or DATA) into dataset/SET/fold-*/
	$(PY) playground/02-shuffle_data.py --folds $(FOLDS) -n $(SET) --stratify $(if $(DATA),--data $(DATA)) $(if $(IMAGES),--root $(IMAGES)) $(ARGS)

audit: $(STAMP) ## duplicates within and across dataset/SET's sets or folds; exit 1 on a leak
	$(PY) playground/12-audit.py -d $(SET) $(ARGS)

audit-bench: $(STAMP) ## the audit's precision/recall on generated templated ads with planted edits
	$(PY) playground/12-audit.py --benchmark $(ARGS)

cv: $(STAMP) ## train and evaluate every fold of dataset/SET; prints the CV score
	$(PY) playground/03-do_learn.py --cv $(SET) --model $(MODEL) $(ARGS)

tune: $(STAMP) ## TRIALS more search trials on dataset/SET's folds (experiments/study.db)
	$(PY) playground/06-tune.py run --trials $(TRIALS) --cv $(SET) --model $(MODEL) $(Q) $(ARGS)

ask: $(STAMP) ## the next configuration to try by hand, as a command line
	$(PY) playground/06-tune.py ask --cv $(SET) --model $(MODEL) $(Q) $(ARGS)

tell: $(STAMP) ## record a hand-run trial: TRIAL=N SCORE=0.81 (or SCORE=fail)
	$(PY) playground/06-tune.py tell $(TRIAL) $(SCORE) $(ARGS)

status: $(STAMP) ## every trial of the study, the best, trials in the last 7 days
	$(PY) playground/06-tune.py status $(ARGS)

report: $(STAMP) ## experiments/leaderboard.{md,html} and the study history plot (SORT=metric)
	$(PY) playground/07-report.py --sort $(SORT) $(ARGS)

docker-build: ## build the palijudge image on NVIDIA's JAX container
	bin/docker-build.sh $(ARGS)

docker-run: ## run CMD (default: bash) in the container with the GPU and the data folders
	bin/docker-run.sh $(CMD)

clean: ## remove the virtual environment and caches (keeps cache/, dataset/, checkpoints/)
	rm -rf $(VENV) .pytest_cache
