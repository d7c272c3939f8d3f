#!/usr/bin/env python3
"""Aggregate prediction files (13-inference output, .tsv or .jsonl) into Result blocks.

  ./14-validate_outtsv.py out-aa.tsv out-ab.tsv [--threshold T] [--total] [--json]
  ./14-validate_outtsv.py out.tsv data.tsv      # the original form: + the data it came from

One block per prediction file, headed `Aggregate: FILE`, with ROC-AUC, PR-AUC,
Brier and ECE when the file has p_yes, then a line of 95 % intervals.
--threshold T re-judges p_yes >= T instead of the file's pred column; --total
adds one block over all prediction files. A data file among them (the raw
data.tsv without a header, or any .jsonl/.tsv dataset) is the data predictions
came from: its labels must agree with theirs, and a line `Data: FILE ...` says
how many of its rows each prediction file judged.
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli
from palijudge.options import option


@dataclasses.dataclass(frozen=True)
class Config:
  files: tuple[str, ...] = option((), "prediction files (and the data they came from)",
                                  positional="+")
  threshold: float | None = option(None, "recompute pred as p_yes >= T")
  total: bool = option(False, "also one block over all files")
  json: bool = option(False, "also one JSON line per block")


def main(cfg, project):
  from palijudge import metrics, predictions
  if cfg.threshold is not None and not 0 < cfg.threshold < 1:
    raise cli.UserError(f"--threshold must be in (0, 1), got {cfg.threshold}")
  read = {f: predictions.read_any(project.find(f), cfg.threshold) for f in cfg.files}
  data = [r for r in read.values() if isinstance(r, predictions.DataFile)]
  per_file = {f: rows for f, rows in read.items() if not isinstance(rows, predictions.DataFile)}
  if not per_file:  # Only data: the reader's one line says to make predictions first.
    predictions.read(data[0].path)
  lines = [d.summary(per_file) for d in data]  # Every file checked before any output.
  if cfg.total:
    per_file[f"total ({len(per_file)} files)"] = [r for rows in per_file.values() for r in rows]
  for name, rows in per_file.items():
    print(predictions.format_rows(rows, name, "Aggregate", cfg.threshold))
    if cfg.json:
      conf, scores = predictions.aggregate(rows)
      extra = {**(scores.to_dict() if scores else {}), **predictions.intervals(rows).to_dict()}
      print(metrics.json_line(conf, name, threshold=cfg.threshold, **extra))
  for line in lines:
    print(line)


if __name__ == "__main__":
  cli.run(Config, main)
