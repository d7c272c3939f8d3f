"""Cross-validation runs and the search's training objective.

`cv_learn` trains and evaluates every fold of `dataset/NAME/fold-*/` from
the same base model and reports the CV score (mean and standard deviation of
the chosen metric) with one record per fold. `cv_objective` is what
`06-tune.py run` calls for each trial.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from palijudge import cv as cv_lib
from palijudge import data as data_lib
from palijudge import losses, records, runner, session
from palijudge import train as train_lib


def cv_learn(lm: session.LoadedModel, folds, tcfg: train_lib.TrainConfig,
             opts: runner.EvalOptions, setup: runner.LearnSetup, *, root: str = "dataset",
             metric: str = "f_measure", record: records.RunRecord | None = None,
             report: Callable[[int, float], None] | None = None, log=print) -> cv_lib.CVSummary:
  """Every fold from `lm`; `report(fold, value)` may prune (raise) between folds."""
  per_fold, out_of_fold = [], []
  for i, (tr, va) in enumerate(folds, 1):
    log(f"fold {i}/{len(folds)}")
    names = (str(tr.parent / "all"), str(tr), str(va))
    rec = records.RunRecord(record.path, f"fold-{i}") if record else None
    fold_setup = dataclasses.replace(setup, names=names, save_to=None, record=rec)
    res = runner.learn(lm, data_lib.read_examples(tr, root), data_lib.read_examples(va, root),
                       tcfg, opts, fold_setup, log)
    valid = res.after[str(va)]
    per_fold.append(records.eval_metrics(valid.labels, valid.p_yes, valid.pred, valid.threshold))
    out_of_fold += runner.prediction_rows(valid)
    if report:
      report(i, per_fold[-1][metric])
  summary = cv_lib.summarize(per_fold, metric)
  log(summary.format())
  if record:
    record.write_eval("cv", summary.to_dict())
    record.write_predictions(out_of_fold)
    record.write_summary(summary.format())
    record.plots()
  return summary


def trial_config(config: dict) -> tuple[train_lib.TrainConfig, str]:
  """A search configuration -> (recipe, prompt)."""
  loss = losses.LossConfig(kind=config["loss"], focal_alpha=config["focal_alpha"],
                           focal_gamma=config["focal_gamma"], bce_weight=config["bce_weight"],
                           focal_weight=config["focal_weight"],
                           label_smoothing=config["label_smoothing"])
  tcfg = train_lib.TrainConfig(lr=config["lr"], steps=config["steps"],
                               batch_size=config["batch"], accum=config["accum"],
                               trainable=config["trainable"], loss=loss)
  return tcfg, config["prompt"]


def cv_objective(config: dict, cv_name: str, report, *, model: str | None = None,
                 root: str = "dataset", log=print) -> float:
  """One search trial: CV score of `config` on `dataset/<cv_name>`'s folds."""
  tcfg, prompt = trial_config(config)
  lm = session.load(session.resolve(model or os.environ.get("PALIJUDGE_MODEL")),
                    trainable=tcfg.trainable)
  folds = cv_lib.fold_paths(os.path.join(root, cv_name))
  setup = runner.LearnSetup(names=("", "", ""))
  return cv_learn(lm, folds, tcfg, runner.EvalOptions(prompt=prompt), setup, root=root,
                  metric=report.metric, record=report.record, report=report, log=log).score
