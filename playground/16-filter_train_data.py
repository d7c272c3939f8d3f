#!/usr/bin/env python3
"""Build the next training set from prediction files, by outcome.

  ./16-filter_train_data.py out-aa.tsv --keep errors --max 64 -o dataset/false64.tsv
  ./16-filter_train_data.py out-aa.tsv --keep not-tp --balance --max 64 > noTp64.tsv
  ./16-filter_train_data.py out-aa.tsv | head -64 > false64.tsv   # as the original was run

--keep: fp | fn | errors (= fp+fn) | not-tp | tn+fp. --balance keeps as many
yes as no labels; --max caps the rows (a seeded random sample, file order
kept). The output is a dataset whose image paths resolve against the same root
as the predictions' (give 15-train.py the same -i): TSV without a header, one
`image label [prefix]` row a line, the original raw data's form (so `| head -64`
keeps 64 rows; 13 and 15 read it), or .jsonl (-o x.jsonl: with each row's id).
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli
from palijudge.options import option
from palijudge.predictions import KEEPS


@dataclasses.dataclass(frozen=True)
class Config:
  files: tuple[str, ...] = option((), "prediction files (13-inference output)", positional="+")
  keep: str = option("errors", "which outcomes stay", choices=list(KEEPS))
  max_rows: int | None = option(None, "at most this many rows", flag="--max")
  balance: bool = option(False, "as many yes as no labels")
  seed: int = option(0, "seed of the --max/--balance sample")
  threshold: float | None = option(None, "re-judge p_yes >= T instead of pred")
  out: str | None = option(None, "dataset to write (.tsv or .jsonl); default: TSV on stdout",
                           short="-o", suppress_default=True)


def main(cfg, project):
  import sys
  from palijudge import files, predictions
  if cfg.threshold is not None and not 0 < cfg.threshold < 1:
    raise cli.UserError(f"--threshold must be in (0, 1), got {cfg.threshold}")
  fmt = predictions.format_of(cfg.out)
  if cfg.out:
    files.check_writable(cfg.out, "output", [("a prediction file", project.find(f))
                                              for f in cfg.files])
  rows = [r for f in cfg.files for r in predictions.read(project.find(f), cfg.threshold)]
  res = predictions.select(rows, cfg.keep, cfg.max_rows, cfg.balance, cfg.seed)
  if not res.rows:
    raise cli.UserError(f"no rows left: --keep {cfg.keep} matches none of {len(rows)} rows "
                        f"({', '.join(f'{k}={v}' for k, v in res.counts.items())})")
  lines = predictions.dataset_lines(res.rows, fmt)
  if cfg.out:
    files.write_text(cfg.out, lines)
  else:
    sys.stdout.write("".join(lines))  # One write: a small set is whole before `head` closes.
  yes = sum(r.label for r in res.rows)
  print(f"kept {len(res.rows)} of {len(rows)} rows ({cfg.keep}: {res.matched} matched; "
        f"{yes} yes, {len(res.rows) - yes} no)" + (f" -> {cfg.out}" if cfg.out else ""),
        file=sys.stderr)


if __name__ == "__main__":
  cli.run(Config, main)
