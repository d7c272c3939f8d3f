"""The users' iteration as library calls: evaluate, train, evaluate, save.

`fit` runs one training stage; `learn` is `03-do_learn.py`: evaluation of
all/train/valid before training, one or two stages (the second at lr/10),
evaluation after each, and the checkpoint saved atomically with its config.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np

from palijudge import checkpoint
from palijudge import fit as fit_lib
from palijudge import train as train_lib
from palijudge.data import Example
from palijudge.errors import UserError
from palijudge.evaluate import EvalResult, evaluate
from palijudge.metrics import format_block, json_line
from palijudge.pipeline import PixelCache
from palijudge.session import LoadedModel

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class LearnResult:
  lm: LoadedModel
  before: dict[str, EvalResult]
  after: dict[str, EvalResult]  # After the last stage.


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  prompt: str
  mode: str = "score"
  batch_size: int = 8
  threshold: float = 0.5
  gif_frame: str = "first"
  as_json: bool = False


def report(lm: LoadedModel, sets: dict[str, Sequence[Example] | list[str]], opts: EvalOptions,
           tag: str, log: Log = print, cache: PixelCache | None = None
           ) -> dict[str, EvalResult]:
  """Evaluates each named set and prints its Result block (and JSON line).

  A set given as a list of earlier set names is their union, reported from
  their results without evaluating anything twice.
  """
  out: dict[str, EvalResult] = {}
  for name in sorted(sets, key=lambda n: _is_union(sets[n])):
    examples = sets[name]
    if _is_union(examples):
      res = EvalResult.concat([out[part] for part in examples])
    else:
      res = evaluate(lm, examples, prompt=opts.prompt, mode=opts.mode,
                     batch_size=opts.batch_size, threshold=opts.threshold,
                     gif_frame=opts.gif_frame, cache=cache)
    out[name] = res
  for name in sets:
    res = out[name]
    title = f"{name} ({tag})" if tag else name
    log(format_block(res.confusion, title))
    if opts.mode == "decode":
      log(f"  invalid answers: {res.invalid}/{len(res.examples)}")
    if opts.as_json:
      log(json_line(res.confusion, name, stage=tag, invalid=res.invalid))
  return out


def _is_union(value) -> bool:
  return bool(value) and all(isinstance(v, str) for v in value)


def learn(lm: LoadedModel, train: Sequence[Example], valid: Sequence[Example],
          tcfg: train_lib.TrainConfig, opts: EvalOptions, *, names: tuple[str, str, str],
          save_to: str | None, two_stage: bool = False, log: Log = print,
          resume: bool = False) -> LearnResult:
  """03-do_learn: evaluate before, train (1 or 2 stages), evaluate after, save."""
  all_name, train_name, valid_name = names
  sets = {all_name: [train_name, valid_name], train_name: train, valid_name: valid}
  cache = PixelCache()
  state_path = save_to[:-len(".npz")] + ".state.npz" if save_to else None
  before = after = report(lm, sets, opts, "before training", log, cache)
  stages = [tcfg] + ([dataclasses.replace(tcfg, lr=tcfg.lr / 10)] if two_stage else [])
  for i, stage in enumerate(stages):
    log(f"training stage {i + 1}: lr {stage.lr:g}, batch {stage.batch_size}, "
        f"{stage.steps} steps, trainable {stage.trainable}, {stage.optimizer}")
    fit_opts = fit_lib.FitOptions(prompt=opts.prompt, gif_frame=opts.gif_frame,
                                  state_path=state_path, resume=resume, stage=i)
    result = fit_lib.fit(lm, train, stage, fit_opts, log=log, cache=cache)
    lm = dataclasses.replace(lm, params=result.params)
    after = report(lm, sets, opts, ("1st", "2nd")[i] + " trained", log, cache)
  if save_to:
    meta = {"tokenizer": lm.spec.tokenizer, "base": lm.spec.weights, "prompt": opts.prompt,
            "train_config": dataclasses.asdict(tcfg), "two_stage": two_stage,
            "threshold": opts.threshold,
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    checkpoint.save(save_to, lm.params, lm.cfg, meta)
    log(f"saved {save_to}")
    if state_path and os.path.exists(state_path):
      os.remove(state_path)  # The run finished: its periodic state is obsolete.
  return LearnResult(lm, before, after)
