#!/usr/bin/env python3
"""Leaderboard of every run and trial in experiments/: markdown and a sortable HTML page.

  ./07-report.py                      # experiments/leaderboard.{md,html} (+ study history PNG)
  ./07-report.py --sort auc           # markdown rows sorted by AUC (HTML: click a column)

Rows: one per experiments/<run>/ folder, plus study trials without a folder
(experiments/study.db, or --storage URL). The best row is marked. Missing
plots of a run are drawn from its train_log.csv and predictions.jsonl.
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.options import option


@dataclasses.dataclass(frozen=True)
class Config:
  experiments: str | None = option(None, "the run records folder (default: the project's "
                                   "experiments/)", suppress_default=True)
  sort: str = option("score", "markdown sort key (metrics high first, settings low first)",
                     choices=configs.SORT_KEYS)
  storage: str | None = option(None, "study database URL (default: EXPERIMENTS/study.db if "
                               "present)", suppress_default=True)
  no_plots: bool = option(False, "do not draw missing run plots")


def main(cfg, project):
  from palijudge.experiments import leaderboard
  built = leaderboard.build(cfg.experiments or project.experiments, cfg.sort, cfg.storage,
                            not cfg.no_plots)
  print(f"{built.rows} row(s): {built.markdown}, {built.html}")
  for path in built.histories:
    print(f"study history: {path}")


if __name__ == "__main__":
  cli.run(Config, main)
