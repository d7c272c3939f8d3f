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
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import resolve
from palijudge.options import group, option

PREDICTION_SUFFIXES = (".tsv", ".jsonl")


@dataclasses.dataclass(frozen=True)
class Config:
  files: tuple[str, ...] = option((), ".jsonl or .tsv datasets to compare on (a checkpoint "
                                  "needs at least one)", positional="*")
  root: str | None = cli.root_option()
  load: configs.LoadConfig = group(configs.LoadConfig, "model")
  # -b names model B here; the batch size keeps --eval-batch.
  eval: configs.EvalConfig = group(configs.EvalConfig, "evaluation", skip=(
      "pick_threshold", "target", "gallery", "gallery_max", "json"), no_short=("eval_batch",))
  eval_set: tuple[str, ...] = cli.eval_set_option()
  a: str = option(None, "model A: a checkpoint .npz, base, or a prediction file .tsv/.jsonl",
                  flag="-a", required=True, metavar="MODEL")
  b: str = option(None, "model B: the same kinds as -a", flag="-b", required=True,
                  metavar="MODEL")
  seed: int = option(0, "seed of the bootstrap resamples")
  resamples: int = option(2000, "bootstrap resamples")
  max_list: int = option(20, "flipped examples listed each way", flag="--list", metavar="N")


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


def _judge(source: str, kind: str, sets: dict, cfg, project) -> dict:
  """{set name: compare.Side}: a prediction file's rows, or a model evaluated on every set."""
  from palijudge.evaluation import compare
  if kind == "file":
    return compare.sides_from_file(project.find(source), sets, cfg.eval.threshold)
  r = resolve(cfg, project, [source] if kind == "checkpoint" else [])
  ecfg = r.eval
  judge = r.judge()  # A checkpoint, the base (--model), or a probe.
  # The judge goes when this returns: one model at a time.
  return compare.judge_sets(judge.lm, sets, ecfg, judge.scorer)


def main(cfg, project):
  from palijudge.evaluation import compare
  if cfg.resamples < 1 or cfg.max_list < 0:
    raise cli.UserError("--resamples must be >= 1 and --list >= 0")
  r = resolve(cfg, project, [])
  sets = {f: r.read(f) for f in cfg.files}
  sets.update(r.eval_sets(taken=list(sets)))
  kinds = [_kind(s, f, bool(sets)) for s, f in ((cfg.a, "-a"), (cfg.b, "-b"))]
  # Prediction files first: one that lacks a set's examples is refused before a model loads.
  order = sorted(range(2), key=lambda i: kinds[i] != "file")
  sides = [None, None]
  for i in order:
    sides[i] = _judge((cfg.a, cfg.b)[i], kinds[i], sets, cfg, project)
  a, b = sides
  done = [compare.compare(name, a[name], b[name], cfg.seed, cfg.resamples) for name in a]
  print(f"A = {cfg.a}\nB = {cfg.b}")
  for c in done:
    print(compare.format_comparison(c, cfg.max_list))


if __name__ == "__main__":
  cli.run(Config, main)
