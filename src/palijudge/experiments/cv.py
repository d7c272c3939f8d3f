"""Cross-validation runs (`03-do_learn.py --cv NAME`) and the search's objective.

The folds themselves are written and read by `data.splits`. `cv_learn` trains
and evaluates every fold from the same base model and reports the CV score
with one run record per fold; `cv_objective` is what `06-tune.py run` calls
for each trial.

The CV score is the mean of one metric over the folds; its spread is the
sample standard deviation (ddof=1, the one the t interval is built from), the
lowest and the highest fold, and a 95 % Student t interval of the mean
(`stats.spread`).
The folds share most of their training data, so the folds' values are not
independent and the t interval is, if anything, too narrow.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np

from palijudge import configs, learn, loader, losses, metrics, options, predictions
from palijudge.evaluation import stats
from palijudge import train as train_lib
from palijudge.data import examples, splits
from palijudge.errors import UserError
from palijudge.configs import EvalConfig
from palijudge.experiments import records
from palijudge.experiments.records import finite

METRICS = configs.CV_METRICS


def cv_score(values: Sequence[float]) -> tuple[float, float]:
  """(mean, sample std) of per-fold values (std 0.0 for one value); UserError when empty or
  non-finite."""
  v = np.asarray([float(x) for x in values], np.float64)
  if v.size == 0:
    raise UserError("CV score of no folds")
  if not np.all(np.isfinite(v)):
    raise UserError(f"CV score: non-finite fold value in {v.tolist()}")
  return float(v.mean()), stats.sample_std(v)


@dataclasses.dataclass(frozen=True)
class CVSummary:
  """The CV result of one run: `metric` over the folds, and every metric's mean/std."""
  metric: str
  score: float
  std: float
  folds: list[float]
  means: dict[str, float]
  stds: dict[str, float]
  fold_min: float | None = None
  fold_max: float | None = None
  interval: tuple[float, float] | None = None  # 95 % t interval of the mean; None: 1 fold.
  one_class: str | None = None  # "yes"/"no": every prediction of every fold was that answer
  counts: dict[str, int] | None = None  # tp/tn/fp/fn summed over the folds, when known

  def to_dict(self) -> dict[str, Any]:
    """The `cv` block of eval_metrics.json (what the report reads)."""
    return dataclasses.asdict(self)

  def format(self) -> str:
    """`CV f_measure (5 folds): 0.8123 +- 0.0456` and one line of fold values."""
    folds = "  ".join(f"fold {i}: {v:.4f}" for i, v in enumerate(self.folds, 1))
    lines = [f"CV {self.metric} ({len(self.folds)} folds): {self.score:.4f} +- {self.std:.4f}",
             f"  {folds}"]
    if self.fold_min is not None:
      iv = "n/a" if self.interval is None else stats.Interval(*self.interval).text(4)
      lines.append(f"  spread: min {self.fold_min:.4f}  max {self.fold_max:.4f}  "
                   f"{stats.percent()} t-interval of the mean {iv}")
    for m in METRICS:
      if m in self.means:
        lines.append(f"  {m + ':':11s}{self.means[m]:.4f} +- {self.stds[m]:.4f}")
    if self.warning():
      lines.append(f"  warning: {self.warning()}")
    return "\n".join(lines)

  def warning(self) -> str:
    """Why the score may flatter the model ("" when nothing is suspect)."""
    if not self.one_class or not self.counts:
      return ""
    return metrics.constant_warning(metrics.Confusion(**self.counts),
                                    "the folds' valid sets are")


def summarize(fold_metrics: Sequence[dict[str, Any]], metric: str = "f_measure") -> CVSummary:
  """CVSummary from one metrics dict per fold (Confusion.to_dict(), plus auc...)."""
  if metric not in METRICS:
    raise UserError(f"CV metric must be one of {', '.join(METRICS)}, got {metric!r}")
  if not fold_metrics:
    raise UserError("CV summary of no folds")
  missing = [i + 1 for i, m in enumerate(fold_metrics) if finite(m.get(metric)) is None]
  if missing:
    raise UserError(f"CV metric {metric} missing or not finite in fold(s) {missing}")
  values = [float(m[metric]) for m in fold_metrics]
  score, std = cv_score(values)
  spread = stats.spread(values)
  means, stds = {}, {}
  for name in METRICS:
    vals = [finite(m.get(name)) for m in fold_metrics]
    if all(v is not None for v in vals):
      means[name], stds[name] = cv_score(vals)
  iv = None if spread.interval is None else (spread.interval.low, spread.interval.high)
  total = metrics.summed(fold_metrics)
  counts = None if total is None else dict(tp=total.tp, tn=total.tn, fp=total.fp, fn=total.fn)
  return CVSummary(metric, score, std, values, means, stds, spread.low, spread.high, iv,
                   metrics.one_class(fold_metrics), counts)


# --- Cross-validation runs and the search objective -----------------------



def cv_learn(lm: loader.LoadedModel, folds, tcfg: train_lib.TrainConfig, ecfg: EvalConfig,
             lcfg: learn.LearnConfig = learn.LearnConfig(), *, root: str,
             metric: str = "f_measure", record: records.RunRecord | None = None,
             report: Callable[[int, float], None] | None = None, log=print) -> CVSummary:
  """Every fold from `lm`; `report(fold, value)` may prune (raise) between folds."""
  per_fold, out_of_fold = [], []
  for i, (tr, va) in enumerate(folds, 1):
    log(f"fold {i}/{len(folds)}")
    names = (str(tr.parent / "all"), str(tr), str(va))
    rec = records.RunRecord(record.path, f"fold-{i}") if record else None
    try:
      res = learn.learn(lm, examples.read_examples(tr, root), examples.read_examples(va, root),
                        tcfg, ecfg, lcfg, names=names, record=rec, log=log)
    finally:
      if rec:
        rec.close()  # The fold's TensorBoard writer; a search runs many folds in one process.
    if res.diverged:  # A CV score over a diverged fold would mean nothing.
      raise UserError(f"fold {i}: training diverged ({res.diverged})")
    valid = res.after[str(va)]
    per_fold.append(valid.metrics())
    out_of_fold += predictions.records_of(valid)
    if report:
      report(i, per_fold[-1][metric])
  summary = summarize(per_fold, metric)
  log(summary.format())
  if record:
    record.write_eval("cv", summary.to_dict())
    record.write_predictions(out_of_fold)
    record.write_summary(summary.format())
    record.plots()
  return summary


SEARCH_CONFIGS = (train_lib.TrainConfig, losses.LossConfig, learn.LearnConfig)


def config_keys() -> dict[str, tuple[type, dataclasses.Field]]:
  """A search configuration's keys, 03-do_learn.py's flags as names (`--batch` -> batch,
  `--loss` -> loss, `--two-stage` -> two_stage) -> (its config class, the field)."""
  return {options.flag_name(f)[2:].replace("-", "_"): (cls, f)
          for cls in SEARCH_CONFIGS for f in options.flags(cls)}


def _fields(cls: type, config: dict) -> dict[str, Any]:
  """The `cls` fields that `config` (a search configuration) sets, by field name."""
  return {f.name: config[key] for key, (c, f) in config_keys().items()
          if c is cls and key in config}


def trial_config(config: dict) -> tuple[train_lib.TrainConfig, str]:
  """A search configuration (see tune.DEFAULTS, plus any fixed flags) -> (recipe, prompt)."""
  loss = losses.LossConfig(**_fields(losses.LossConfig, config))
  tcfg = train_lib.TrainConfig(**_fields(train_lib.TrainConfig, config), loss=loss)
  return tcfg, config["prompt"]


def learn_config(config: dict) -> learn.LearnConfig:
  """The stages and lottery of a search configuration (its fixed flags; else 03's defaults)."""
  return learn.LearnConfig(**_fields(learn.LearnConfig, config))


def cv_objective(config: dict, folds_dir: str | os.PathLike, report, *, model: str | None,
                 root: str, cache_dir: str = loader.CACHE_DIR, quantize: str | None = None,
                 log=print) -> float:
  """One search trial: CV score of `config` on the folds in `folds_dir` (`Project.split`);
  image paths resolve against `root`; `quantize` as 03's --quantize."""
  tcfg, prompt = trial_config(config)
  lm = loader.load(loader.resolve(model, cache_dir=cache_dir), trainable=tcfg.trainable,
                   quantize=quantize)
  folds = splits.fold_paths(folds_dir)
  summary = cv_learn(lm, folds, tcfg, EvalConfig(prompt=prompt), learn_config(config), root=root,
                     metric=report.metric, record=report.record, report=report, log=log)
  if summary.warning():
    report.warn(summary.warning())
  return summary.score
