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
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  from palijudge import predictions
  p = cli.parser(__doc__)
  p.add_argument("files", nargs="+", help="prediction files (13-inference output)")
  p.add_argument("--keep", default="errors", choices=list(predictions.KEEPS),
                 help="which outcomes stay")
  p.add_argument("--max", type=int, dest="max_rows", help="at most this many rows")
  p.add_argument("--balance", action="store_true", help="as many yes as no labels")
  p.add_argument("--seed", type=int, default=0, help="seed of the --max/--balance sample")
  p.add_argument("--threshold", type=float, help="re-judge p_yes >= T instead of pred")
  p.add_argument("-o", "--out", help="dataset to write (.tsv or .jsonl); default: TSV on stdout")
  return p


def main(args, project):
  import sys
  from palijudge import files, predictions
  if args.threshold is not None and not 0 < args.threshold < 1:
    raise cli.UserError(f"--threshold must be in (0, 1), got {args.threshold}")
  fmt = predictions.format_of(args.out)
  if args.out:
    files.check_writable(args.out, "output", [("a prediction file", project.find(f))
                                              for f in args.files])
  rows = [r for f in args.files for r in predictions.read(project.find(f), args.threshold)]
  res = predictions.select(rows, args.keep, args.max_rows, args.balance, args.seed)
  if not res.rows:
    raise cli.UserError(f"no rows left: --keep {args.keep} matches none of {len(rows)} rows "
                        f"({', '.join(f'{k}={v}' for k, v in res.counts.items())})")
  lines = predictions.dataset_lines(res.rows, fmt)
  if args.out:
    files.write_text(args.out, lines)
  else:
    sys.stdout.write("".join(lines))  # One write: a small set is whole before `head` closes.
  yes = sum(r.label for r in res.rows)
  print(f"kept {len(res.rows)} of {len(rows)} rows ({args.keep}: {res.matched} matched; "
        f"{yes} yes, {len(res.rows) - yes} no)" + (f" -> {args.out}" if args.out else ""),
        file=sys.stderr)


if __name__ == "__main__":
  cli.run(main, __file__, flags)
