#!/usr/bin/env python3
"""Compare two models on the same examples: what flipped, McNemar, paired intervals, a verdict.

  ./17-compare.py -a checkpoints/run1.npz -b checkpoints/run2.npz dataset/set1/valid.jsonl
  ./17-compare.py -a base -b checkpoints/trained-set1.npz dataset/set1/valid.jsonl
  ./17-compare.py -a out-a.tsv -b out-b.tsv                            # every row of both
  ./17-compare.py -a out-a.tsv -b out-b.tsv dataset/set2/valid.jsonl   # that set's rows

-a and -b each name a checkpoint (.npz; a probe file too), `base` (the --model
itself) or a prediction file (.tsv/.jsonl from 13-inference.py or 04-validate.py
--scores). A checkpoint is evaluated on every set at its own threshold (its
stored one, else 0.5; --threshold sets both); a prediction file is taken as
written (--threshold re-judges its p_yes). Examples are matched by (image,
label); two sides that hold different examples are refused. Per set: both
Result blocks, the examples that flipped each way, an exact McNemar test on
correctness, paired bootstrap intervals of B - A for precision, recall and
ROC-AUC, and one sentence: which is better, or that no difference is
detectable, and which comparisons are undefined (the precision of a model
that never says yes).
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli

PREDICTION_SUFFIXES = (".tsv", ".jsonl")


def flags():
  p = cli.parser(__doc__)
  p.add_argument("files", nargs="*", help=".jsonl or .tsv datasets to compare on (a checkpoint "
                                          "needs at least one)")
  cli.add_root_flag(p)
  cli.add_model_flags(p)
  cli.add_eval_flags(p, skip=("pick_threshold", "target", "gallery", "gallery_max", "json"))
  p.conflict_handler = "resolve"  # -b names model B here; the batch size keeps --eval-batch.
  models = p.add_argument_group("the two models")
  models.add_argument("-a", required=True, metavar="MODEL",
                      help="model A: a checkpoint .npz, base, or a prediction file .tsv/.jsonl")
  models.add_argument("-b", required=True, metavar="MODEL", help="model B: the same kinds as -a")
  p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
  p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
  p.add_argument("--list", dest="max_list", type=int, default=20, metavar="N",
                 help="flipped examples listed each way")
  return p


def _kind(source: str, flag: str, have_sets: bool) -> str:
  """file, base or checkpoint; refuses anything else before any work."""
  if source.lower().endswith(PREDICTION_SUFFIXES):
    return "file"
  if source != "base" and not source.endswith(".npz"):
    raise cli.UserError(f"{flag} {source}: expected a checkpoint .npz, base, or a prediction "
                        f"file .tsv/.jsonl")
  if not have_sets:
    raise cli.UserError(f"{flag} {source}: a model needs one or more datasets to be evaluated on")
  return "base" if source == "base" else "checkpoint"


def _judge(source: str, kind: str, sets: dict, args, project) -> dict:
  """{set name: compare.Side}: a prediction file's rows, or a model evaluated on every set."""
  from palijudge import checkpoint, compare
  if kind == "file":
    return compare.sides_from_file(project.find(source), sets, args.threshold)
  paths = [project.find(source)] if kind == "checkpoint" else []
  ecfg = cli.eval_config(args, checkpoint.stored_threshold(paths[0] if paths
                                                           else project.find(args.model)))
  judge = cli.load_judge(args, project, paths, ecfg)  # A checkpoint, the base, or a probe.
  # The judge goes when this returns: one model at a time.
  return compare.judge_sets(judge.lm, sets, ecfg, judge.scorer)


def main(args, project):
  from palijudge import compare
  from palijudge.data import examples
  cli.eval_config(args)  # Refuses a bad --threshold before any work.
  if args.resamples < 1 or args.max_list < 0:
    raise cli.UserError("--resamples must be >= 1 and --list >= 0")
  sets = {f: examples.read_examples(project.find(f), cli.data_root(args, project, project.find(f)))
          for f in args.files}
  sets.update(cli.eval_sets(args, project, taken=list(sets)))
  kinds = [_kind(s, f, bool(sets)) for s, f in ((args.a, "-a"), (args.b, "-b"))]
  # Prediction files first: one that lacks a set's examples is refused before a model loads.
  order = sorted(range(2), key=lambda i: kinds[i] != "file")
  sides = [None, None]
  for i in order:
    sides[i] = _judge((args.a, args.b)[i], kinds[i], sets, args, project)
  a, b = sides
  done = [compare.compare(name, a[name], b[name], args.seed, args.resamples) for name in a]
  print(f"A = {args.a}\nB = {args.b}")
  for c in done:
    print(compare.format_comparison(c, args.max_list))


if __name__ == "__main__":
  cli.run(main, __file__, flags)
