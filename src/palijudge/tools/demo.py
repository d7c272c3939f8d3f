"""`make demo`: the whole workflow on the embedded default, CPU only.

Generates the synthetic ad dataset (or takes the user's `data.jsonl`, images
relative to its folder), writes the seeded tiny model and tokenizer, splits
off a stratified validation set, then runs `learn.learn`: evaluation
before, training, evaluation after, checkpoint saved.

The tiny model starts from random weights, so the colab's recipe (attention
only, SGD 0.03) cannot teach it anything; the demo recipe trains every
parameter with Adam instead. With `--quantize`, the vision encoder and its
projection are frozen and quantized, and the decoder trains over their image
tokens (`--trainable llm`, Adam): the visual rule must be learned from the
quantized encoder's features. (LoRA over a random decoder is a lottery on
this model; BENCHMARKS.md, "Quantized frozen weights".)
"""

from __future__ import annotations

import dataclasses
import os

from palijudge import files, learn, loader
from palijudge.data import examples, splits, synthetic
from palijudge.errors import UserError
from palijudge.evaluate import EvalConfig, EvalResult
from palijudge.files import Project
from palijudge.train import TrainConfig

DEMO_RECIPE = TrainConfig(lr=2e-3, batch_size=16, steps=320, seed=0, trainable="all",
                          optimizer="adam", print_every=20)
GATE = 0.9  # The demo fails (exit 1) below this validation accuracy.


def run(project: Project, data: str | None = None, preset: str = "tiny",
        recipe: TrainConfig = DEMO_RECIPE, valid_fraction: float = 0.2, seed: int = 0,
        save: bool = True, n_images: int = 200, quantize: str | None = None,
        log=print) -> EvalResult:
  """Returns the validation EvalResult after training.

  `quantize` (int8, int4, nf4): the frozen matrices quantized; a recipe that
  trains everything trains the decoder only (`llm`), so the encoder is frozen.
  """
  if data is None:
    data = str(synthetic.make_dataset(project.dataset / "demo", n=n_images, seed=seed))
    log(f"generated {data}")
  root = os.path.dirname(os.path.abspath(data))
  rows = examples.read_jsonl(data, root)
  n_valid = max(1, round(valid_fraction * len(rows)))
  if len(rows) < 4:
    raise UserError(f"{data}: the demo needs at least 4 examples, found {len(rows)}")
  train, valid = splits.split(rows, n_valid, seed, stratify=True, data_path=data)
  log(f"train {len(train)} {splits.class_counts(train)}, "
      f"valid {len(valid)} {splits.class_counts(valid)}")
  spec = loader.write_random_model(preset, str(project.cache), seed)
  if quantize not in (None, "none") and recipe.trainable == "all":
    recipe = dataclasses.replace(recipe, trainable="llm")
  lm = loader.load(spec, trainable=recipe.trainable, quantize=quantize)
  base = files.shown(os.path.splitext(data)[0])
  names = (f"{base} (all)", f"{base} (train split)", f"{base} (valid split)")
  save_to = str(project.checkpoints / "demo.npz") if save else None
  result = learn.learn(lm, train, valid, recipe, EvalConfig(eval_batch=32), names=names,
                       save_to=save_to, log=log)
  return result.after[names[2]]


def gate(valid: EvalResult) -> tuple[bool, str]:
  """(passed, the line `make demo` ends with): valid accuracy against GATE."""
  acc = valid.confusion.accuracy
  ok = acc >= GATE
  return ok, f"demo: valid accuracy {acc:.3f} ({'ok' if ok else f'below {GATE}'})"
