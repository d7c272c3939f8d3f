#!/usr/bin/env python3
"""Validate a checkpoint (or the base model) on one or more JSONL files.

  ./04-validate.py -m checkpoints/trained-set1.npz dataset/set2/train.jsonl dataset/set2/valid.jsonl
"""
from palijudge import cli


def main():
  import os
  from palijudge import data, evaluate, runner
  p = cli.parser(__doc__)
  p.add_argument("files", nargs="+", help="JSONL files to evaluate")
  p.add_argument("-m", "--checkpoint", help="checkpoint .npz (default: the base --model)")
  p.add_argument("--scores", help="write per-example label, p(yes), prediction to this JSONL")
  cli.add_model_args(p)
  cli.add_eval_args(p)
  args = p.parse_args()
  opts = cli.eval_options(args)
  sets = {f: data.read_jsonl(f, args.root) for f in args.files}
  lm = cli.load_model(args, model=args.checkpoint)
  results = runner.report(lm, sets, opts, tag="")
  if args.scores:
    merged = evaluate.EvalResult(
        [e for r in results.values() for e in r.examples],
        __import__("numpy").concatenate([r.p_yes for r in results.values()]),
        __import__("numpy").concatenate([r.pred for r in results.values()]),
        [a for r in results.values() for a in r.answers],
        sum(r.invalid for r in results.values()), opts.threshold)
    evaluate.write_scores(args.scores, merged)
    print(f"wrote {os.path.normpath(args.scores)}")


if __name__ == "__main__":
  cli.run_main(main)
