"""The users' iteration as library calls: evaluate, train, evaluate, save.

`fit` runs one training stage; `learn` is `03-do_learn.py`: evaluation of
all/train/valid before training, one or two stages (the second at lr/10),
evaluation after each, and the checkpoint saved atomically with its config.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from typing import Callable, Sequence


from palijudge import checkpoint
from palijudge.model import lora as lora
from palijudge import metrics
from palijudge.experiments import records as records
from palijudge import train as fit_lib
from palijudge import train as train_lib
from palijudge.data.examples import Example
from palijudge.evaluate import (EvalResult, evaluate, format_result, json_extra, regressions,
                                 shared_threshold)
from palijudge.metrics import json_line
from palijudge.data.features import FeatureCache
from palijudge.data.batch import PixelCache
from palijudge.evaluate import ReportOptions, apply_pick, write_gallery
from palijudge.loader import LoadedModel
from palijudge import params as params_lib

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
           tag: str, log: Log = print, cache: PixelCache | None = None,
           honest: ReportOptions | None = None,
           baseline: dict[str, EvalResult] | None = None,
           features: FeatureCache | None = None) -> dict[str, EvalResult]:
  """Evaluates each named set and prints its Result block (and JSON line).

  A set given as a list of earlier set names is their union, reported from
  their results without evaluating anything twice. `honest` adds a threshold
  picked on one set and applied unchanged to all (every result then carries
  it: `evaluate.shared_threshold`), all-frame GIF scoring and error
  galleries; `baseline` (the results before training) adds a warning line for
  every set that got worse.
  """
  ro = honest or ReportOptions()
  out: dict[str, EvalResult] = {}
  for name, examples in sets.items():
    if not _is_union(examples):
      out[name] = evaluate(lm, examples, prompt=opts.prompt, mode=opts.mode,
                           batch_size=opts.batch_size, threshold=opts.threshold,
                           gif_frame=opts.gif_frame, cache=cache, frames=ro.frames,
                           combine=ro.combine, features=features)
  for name, examples in sets.items():
    if _is_union(examples):
      out[name] = EvalResult.concat([out[part] for part in examples])
  out, _ = apply_pick(out, ro, opts.mode, log)
  for name in sets:
    res = out[name]
    log(format_result(res, f"{name} ({tag})" if tag else name))
    if opts.as_json:
      log(json_line(res.confusion, name, stage=tag, **json_extra(res)))
    write_gallery(ro, name, tag, res, log)
  for line in regressions(baseline or {}, {n: out[n] for n in sets}):
    log(line)
  return {n: out[n] for n in sets}


def _is_union(value) -> bool:
  return bool(value) and all(isinstance(v, str) for v in value)


SELECT = ("precision", "f1", "accuracy", "recall", "auc")


def selection_score(result: EvalResult, metric: str) -> float:
  """The validation metric `--runs` keeps the best run by (higher is better)."""
  c = result.confusion
  values = {"precision": c.precision, "f1": c.f_measure, "accuracy": c.accuracy,
            "recall": c.recall}
  if metric == "auc":
    auc = metrics.roc_auc(result.labels.tolist(), result.p_yes.tolist())
    return float("-inf") if auc is None else auc
  return values[metric]


@dataclasses.dataclass(frozen=True)
class LearnSetup:
  """What 03-do_learn runs, beyond the recipe itself."""
  names: tuple[str, str, str]  # all, train, valid (as printed).
  save_to: str | None = None
  two_stage: bool = False
  resume: bool = False
  runs: int = 1               # Independent seeds; the best by `select` is kept.
  select: str = "f1"
  full: bool = False          # Save every parameter, not only the trained ones.
  record: records.RunRecord | None = None  # experiments/<run>/, if kept.
  honest: ReportOptions | None = None  # Threshold picking, GIF frames, galleries.
  extra_sets: dict = dataclasses.field(default_factory=dict)  # --eval-set NAME=FILE.


def _train_run(lm, train, tcfg, setup: LearnSetup, sets, opts, cache, run: int, log, before,
               features):
  """One run: 1 or 2 stages, evaluated after each. Returns (lm, after-results)."""
  state_path = setup.save_to[:-len(".npz")] + ".state.npz" if setup.save_to else None
  stages = [tcfg] + ([dataclasses.replace(tcfg, lr=tcfg.lr / 10)] if setup.two_stage else [])
  after = {}
  for i, stage in enumerate(stages):
    log(f"training stage {i + 1}: lr {stage.lr:g}, batch {stage.batch_size}"
        f"{f' x {stage.accum}' if stage.accum > 1 else ''}, {stage.steps} steps, "
        f"trainable {stage.trainable}, {stage.optimizer}, seed {stage.seed}")
    fit_opts = fit_lib.FitOptions(prompt=opts.prompt, gif_frame=opts.gif_frame,
                                  state_path=state_path, resume=setup.resume,
                                  stage=run * 2 + i)
    result = fit_lib.fit(lm, train, stage, fit_opts, log=log, cache=cache, features=features)
    if setup.record:
      for row in result.history:
        setup.record.log_step(*row)
    stage_seed = result.seed
    if i + 1 < len(stages):
      stages[i + 1] = dataclasses.replace(stages[i + 1], seed=stage_seed)
    lm = dataclasses.replace(lm, params=result.params)
    after = report(lm, sets, opts, ("1st", "2nd")[i] + " trained", log, cache,
                   honest=setup.honest, baseline=before, features=features)
  return lm, after


def learn(lm: LoadedModel, train: Sequence[Example], valid: Sequence[Example],
          tcfg: train_lib.TrainConfig, opts: EvalOptions, setup: LearnSetup,
          log: Log = print) -> LearnResult:
  """03-do_learn: evaluate before, train (runs x stages), evaluate after, save the best."""
  all_name, train_name, valid_name = setup.names
  sets = {all_name: [train_name, valid_name], train_name: train, valid_name: valid,
          **setup.extra_sets}
  cache = PixelCache()
  # Image tokens are computed once per image when the encoder stays frozen.
  features = fit_lib.feature_cache(lm, tcfg.trainable, opts.gif_frame)
  before = report(lm, sets, opts, "before training", log, cache, honest=setup.honest,
                  features=features)
  best = None
  for run in range(setup.runs):
    cfg = dataclasses.replace(tcfg, seed=tcfg.seed + 1000 * run)
    if setup.runs > 1:
      log(f"run {run + 1}/{setup.runs} (seed {cfg.seed})")
    run_lm, after = _train_run(lm, train, cfg, setup, sets, opts, cache, run, log, before,
                               features)
    score = selection_score(after[valid_name], setup.select)
    if setup.runs > 1:
      log(f"run {run + 1}: valid {setup.select} = {score:.4f}")
    if best is None or score > best[0]:
      best = (score, run, run_lm, after, cfg)
  score, run, lm, after, cfg = best
  if setup.runs > 1:
    log(f"best run: {run + 1}/{setup.runs} (seed {cfg.seed}), valid {setup.select} = {score:.4f}")
  if setup.save_to:  # With the threshold picked on a split, if one was.
    _save(lm, cfg, dataclasses.replace(opts, threshold=shared_threshold(after)), setup)
    log(f"saved {setup.save_to}")
  if setup.record:
    _write_record(setup.record, before, after, valid_name)
  return LearnResult(lm, before, after)


def prediction_rows(result: EvalResult) -> list[dict]:
  return [{"image": e.raw_image, "label": "yes" if e.label else "no", "p_yes": float(p),
           "pred": "yes" if q else "no"} for e, p, q in zip(result.examples, result.p_yes,
                                                            result.pred)]


def _write_record(record: records.RunRecord, before, after, valid_name: str) -> None:
  for tag, results in (("before training", before), ("after training", after)):
    record.write_eval(tag, {os.path.basename(n): records.eval_metrics(
        r.labels, r.p_yes, r.pred, r.threshold) for n, r in results.items()})
  record.write_predictions(prediction_rows(after[valid_name]))
  record.plots()


def _save(lm: LoadedModel, tcfg, opts: EvalOptions, setup: LearnSetup) -> None:
  meta = {"tokenizer": lm.spec.tokenizer, "base": lm.spec.weights, "prompt": opts.prompt,
          "train_config": dataclasses.asdict(tcfg), "two_stage": setup.two_stage,
          "threshold": opts.threshold,
          "saved": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  base = lm.spec.base or lm.spec.weights
  if setup.full or params_lib.TRAINABLE.get(tcfg.trainable) == ".*":
    checkpoint.save(setup.save_to, lora.merge(lm.params), lm.cfg, meta)
  else:  # A delta: the trained leaves and the base's sha256.
    keep = re.compile(params_lib.TRAINABLE.get(tcfg.trainable, tcfg.trainable)).search
    checkpoint.save_delta(setup.save_to, lm.params, keep, lm.cfg, base, meta)
  state_path = setup.save_to[:-len(".npz")] + ".state.npz"
  if os.path.exists(state_path):
    os.remove(state_path)  # The run finished: its periodic state is obsolete.
