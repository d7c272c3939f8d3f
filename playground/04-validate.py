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
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  p = cli.parser(__doc__)
  p.add_argument("files", nargs="+", help=".jsonl or .tsv files to evaluate")
  cli.add_judge_flags(p)
  p.add_argument("--scores", help="write one prediction row per example (label, p(yes), "
                                  "prediction) to this .jsonl or .tsv file")
  cli.add_root_flag(p)
  cli.add_model_flags(p)
  cli.add_eval_flags(p)
  return p


def main(args, project):
  import os
  from palijudge import evaluate, files, predictions
  from palijudge.data import examples
  paths = cli.judge_paths(args, project)
  ecfg = cli.judge_config(args, paths)
  sets = {f: examples.read_examples(project.find(f), cli.data_root(args, project, project.find(f)))
          for f in args.files}
  sets.update(cli.eval_sets(args, project, taken=list(sets)))
  if args.scores:
    fmt = predictions.format_of(args.scores)
    for rows in sets.values():
      predictions.check_values(rows, fmt)
    inputs = cli.model_inputs(args, project, paths) + [("a dataset", rows[0].source)
                                                      for rows in sets.values()]
    files.check_writable(args.scores, "--scores file", inputs)
  judge = cli.load_judge(args, project, paths, ecfg)
  results = evaluate.report(judge.lm, sets, ecfg, scorer=judge.scorer)
  if args.scores:
    res = evaluate.EvalResult.concat(list(results.values()))
    predictions.write(args.scores, predictions.rows_of(res), res.mode == "decode")
    print(f"wrote {os.path.normpath(args.scores)}")


if __name__ == "__main__":
  cli.run(main, __file__, flags)
