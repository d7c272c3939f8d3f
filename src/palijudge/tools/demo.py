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

The generated data also feeds the numbered scripts as they are written
(`for_the_numbered_flow`): dataset/data.jsonl, 02's default input (written only
where none is there), and dataset/demo/data.tsv, the original raw TSV form.
"""

from __future__ import annotations

import dataclasses
import os

from palijudge import files, learn, loader
from palijudge.data import examples, splits, synthetic
from palijudge.errors import UserError
from palijudge.configs import EvalConfig
from palijudge.evaluation.scoring import EvalResult
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
    data = generate(project, n_images, seed, log)
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


def generate(project: Project, n_images: int = 200, seed: int = 0, log=print) -> str:
  """The demo's data: dataset/demo/{data.jsonl,images/}, and the same data for the numbered
  scripts (`for_the_numbered_flow`); returns the data.jsonl path."""
  data = str(synthetic.make_dataset(project.dataset / "demo", n=n_images, seed=seed))
  log(f"generated {files.shown(data)}")
  for_the_numbered_flow(project, data, log)
  return data


def for_the_numbered_flow(project: Project, data: str, log=print) -> None:
  """The generated `data` where the original flow reads it, so its commands run as written:
  data.tsv beside it without a header (the raw TSV form: `13-inference.py -d
  dataset/demo/data.tsv -i dataset/demo`, `14-validate_outtsv.py out.tsv dataset/demo/data.tsv`)
  and, unless one is there already (yours is never replaced), dataset/data.jsonl, whose image
  paths start from dataset/ (`02-shuffle_data.sh -v 10 -n set1`, `make split`)."""
  rows = examples.read_jsonl(data)
  examples.write_tsv(os.path.splitext(data)[0] + ".tsv", rows, header=False)
  default = project.dataset / "data.jsonl"
  if default.exists():
    return
  folder = os.path.relpath(os.path.dirname(os.path.abspath(data)), project.dataset)
  examples.write_jsonl(default, [dataclasses.replace(e, raw_image=f"{folder}/{e.raw_image}")
                                 for e in rows])
  log(f"wrote {files.shown(default)}: the same data for the numbered scripts (02-shuffle_data.sh "
      f"-v 10 -n set1, make split); replace it with yours")


def gate(valid: EvalResult) -> tuple[bool, str]:
  """(passed, the line `make demo` ends with): valid accuracy against GATE."""
  acc = valid.confusion.accuracy
  ok = acc >= GATE
  return ok, f"demo: valid accuracy {acc:.3f} ({'ok' if ok else f'below {GATE}'})"
