"""`make demo`: the whole workflow on the embedded default, CPU only.

Generates the synthetic ad dataset (or takes the user's `data.jsonl`, images
relative to its folder), writes the seeded tiny model and tokenizer, splits
off a stratified validation set, then runs `runner.learn`: evaluation
before, training, evaluation after, checkpoint saved.

The tiny model starts from random weights, so the colab's recipe (attention
only, SGD 0.03) cannot teach it anything; the demo recipe trains every
parameter with Adam instead.
"""

from __future__ import annotations

import os

from palijudge.data import examples as data_lib
from palijudge import learn as runner
from palijudge import loader as session
from palijudge.data import synthetic as synthetic
from palijudge.errors import UserError
from palijudge.train import TrainConfig
from palijudge.data import splits

DEMO_RECIPE = TrainConfig(lr=2e-3, batch_size=16, steps=320, seed=0, trainable="all",
                          optimizer="adam", print_every=20)
DEMO_DIR = os.path.join("dataset", "demo")


def run(data: str | None = None, preset: str = "tiny", recipe: TrainConfig = DEMO_RECIPE,
        valid_fraction: float = 0.2, seed: int = 0, cache_dir: str = session.CACHE_DIR,
        save_to: str | None = "checkpoints/demo.npz", log=print) -> dict:
  """Returns the validation EvalResult after training."""
  if data is None:
    data = str(synthetic.make_dataset(DEMO_DIR, n=200, seed=seed))
    log(f"generated {data}")
  root = os.path.dirname(os.path.abspath(data))
  examples = data_lib.read_jsonl(data, root)
  n_valid = max(1, round(valid_fraction * len(examples)))
  if len(examples) < 4:
    raise UserError(f"{data}: the demo needs at least 4 examples, found {len(examples)}")
  train, valid = splits.split(examples, n_valid, seed, stratify=True, data_path=data)
  log(f"train {len(train)} {splits.class_counts(train)}, "
      f"valid {len(valid)} {splits.class_counts(valid)}")
  spec = session.write_random_model(preset, cache_dir, seed)
  lm = session.load(spec, trainable=recipe.trainable)
  opts = runner.EvalOptions(prompt=session.DEFAULT_PROMPT, batch_size=32)
  base = os.path.splitext(data)[0]
  names = (f"{base} (all)", f"{base} (train split)", f"{base} (valid split)")
  setup = runner.LearnSetup(names=names, save_to=save_to)
  result = runner.learn(lm, train, valid, recipe, opts, setup, log=log)
  return result.after[names[2]]
