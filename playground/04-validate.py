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
    evaluate.write_scores(args.scores, evaluate.EvalResult.concat(list(results.values())))
    print(f"wrote {os.path.normpath(args.scores)}")


if __name__ == "__main__":
  cli.run_main(main)
