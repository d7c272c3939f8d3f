#!/usr/bin/env python3
"""Leaderboard of every run and trial in experiments/: markdown and a sortable HTML page.

  ./07-report.py                      # experiments/leaderboard.{md,html} (+ study history PNG)
  ./07-report.py --sort auc           # markdown rows sorted by AUC (HTML: click a column)

Rows: one per experiments/<run>/ folder, plus study trials without a folder
(experiments/study.db, or --storage URL). The best row is marked. Missing
plots of a run are drawn from its train_log.csv and predictions.jsonl.
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  from palijudge.experiments import leaderboard
  p = cli.parser(__doc__)
  p.add_argument("--experiments", default=None,
                 help="the run records folder (default: the project's experiments/)")
  p.add_argument("--sort", default="score", choices=leaderboard.SORT_KEYS,
                 help="markdown sort key (metrics high first, settings low first)")
  p.add_argument("--storage", default=None,
                 help="study database URL (default: EXPERIMENTS/study.db if present)")
  p.add_argument("--no-plots", action="store_true", help="do not draw missing run plots")
  return p


def main(args, project):
  from palijudge.experiments import leaderboard
  built = leaderboard.build(args.experiments or project.experiments, args.sort, args.storage,
                            not args.no_plots)
  print(f"{built.rows} row(s): {built.markdown}, {built.html}")
  for path in built.histories:
    print(f"study history: {path}")


if __name__ == "__main__":
  cli.run(main, __file__, flags)
