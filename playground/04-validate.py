#!/usr/bin/env python3
"""Validate a checkpoint (or the base model) on one or more .jsonl / .tsv files.

  ./04-validate.py -m checkpoints/trained-set1.npz dataset/set2/train.jsonl dataset/set2/valid.jsonl
  ./04-validate.py -m CKPT dataset/set2/valid.jsonl --eval-set safe=dataset/safe.jsonl \\
      --pick-threshold valid --target precision=0.95 --gallery galleries/

The threshold is --threshold, else the one stored in the checkpoint, else 0.5;
--pick-threshold SET chooses it on SET instead and applies it to every file.
"""
from palijudge import cli


def main():
  import os
  from palijudge import evaluate
  from palijudge.data import examples as data
  from palijudge import predictions as predfile
  from palijudge import learn as runner
  p = cli.parser(__doc__)
  p.add_argument("files", nargs="+", help=".jsonl or .tsv files to evaluate")
  p.add_argument("-m", "--checkpoint", help="checkpoint .npz (default: the base --model)")
  p.add_argument("--scores", help="write per-example label, p(yes), prediction to this "
                                  ".jsonl or .tsv file")
  cli.add_model_args(p)
  cli.add_eval_args(p)
  args = p.parse_args()
  opts = cli.eval_options(args, cli.stored_threshold(args.checkpoint or args.model))
  honest = cli.report_options(args)
  if args.scores:
    predfile.format_of(args.scores)
  sets = {f: data.read_examples(f, args.root) for f in args.files}
  sets.update(cli.eval_sets(args, taken=list(sets)))
  lm = cli.load_model(args, model=args.checkpoint)
  results = runner.report(lm, sets, opts, tag="", honest=honest)
  if args.scores:
    res = evaluate.EvalResult.concat(list(results.values()))
    if args.scores.lower().endswith(".jsonl"):
      evaluate.write_scores(args.scores, res)
    else:
      predfile.write(args.scores, predfile.rows_from(res.examples, res.p_yes, res.pred,
                                                     res.answers), res.mode == "decode")
    print(f"wrote {os.path.normpath(args.scores)}")


if __name__ == "__main__":
  cli.run_main(main)
