#!/usr/bin/env python3
"""Validate a checkpoint (or the base model) on one or more .jsonl / .tsv files.

  ./04-validate.py -m checkpoints/trained-set1.npz dataset/set2/train.jsonl dataset/set2/valid.jsonl
  ./04-validate.py -m CKPT dataset/set2/valid.jsonl --eval-set safe=dataset/safe.jsonl \\
      --pick-threshold valid --target precision=0.95 --gallery galleries/
  ./04-validate.py -m checkpoints/x.run1.npz,checkpoints/x.run2.npz --ensemble min FILE
  ./04-validate.py -m checkpoints/x.probe.npz FILE        # the linear probe (03 --probe)

Several checkpoints (-m repeated, or a comma list) judge as an ensemble: their
p(yes) averaged per example (--ensemble mean) or the lowest (min). The
threshold is --threshold, else the one stored in the checkpoint(s) if they
agree, else 0.5; --pick-threshold SET chooses it on SET instead and applies it
to every file.
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import resolve
from palijudge.options import group, option


@dataclasses.dataclass(frozen=True)
class Config:
  files: tuple[str, ...] = option((), ".jsonl or .tsv files to evaluate", positional="+")
  judge: configs.JudgeConfig = group(configs.JudgeConfig, "which checkpoints judge")
  scores: str | None = option(None, "write one prediction row per example (label, p(yes), "
                              "prediction) to this .jsonl or .tsv file")
  root: str | None = cli.root_option()
  load: configs.LoadConfig = group(configs.LoadConfig, "model")
  eval: configs.EvalConfig = group(configs.EvalConfig, "evaluation")
  eval_set: tuple[str, ...] = cli.eval_set_option()


def main(cfg, project):
  import os
  from palijudge import files, predictions
  from palijudge.evaluation import reports, scoring
  r = resolve(cfg, project)
  ecfg = r.eval
  sets = {f: r.read(f) for f in cfg.files}
  sets.update(r.eval_sets(taken=list(sets)))
  if cfg.scores:
    fmt = predictions.format_of(cfg.scores)
    for rows in sets.values():
      predictions.check_values(rows, fmt)
    inputs = r.inputs() + [("a dataset", rows[0].source) for rows in sets.values()]
    files.check_writable(cfg.scores, "--scores file", inputs)
  judge = r.judge()
  results = reports.report(judge.lm, sets, ecfg, scorer=judge.scorer)
  if cfg.scores:
    res = scoring.EvalResult.concat(list(results.values()))
    predictions.write(cfg.scores, predictions.rows_of(res), res.mode == "decode")
    print(f"wrote {os.path.normpath(cfg.scores)}")


if __name__ == "__main__":
  cli.run(Config, main)
