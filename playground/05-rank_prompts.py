#!/usr/bin/env python3
"""Rank candidate prompts: score a model on a dataset with each, best first.

  ./05-rank_prompts.py --model paligemma-3b-pt-224 dataset/data.jsonl \\
      --prompt "Is this image appropriate based on Federal Food, Drug, and Cosmetic Act?" \\
      --prompt "Is this ad lawful?" [--prompts prompts.txt] [--metric auc]

Every candidate replaces every row's prefix. The table shows the chosen
metric, ROC-AUC and the confusion counts at --threshold (0.5).
"""
from palijudge import cli


def main():
  from palijudge import evaluate
  from palijudge.data import examples as data
  from palijudge import evaluate as prompts
  p = cli.resolving_parser(__doc__)  # --prompt below replaces add_model_args' one prompt.
  p.add_argument("files", nargs="+", help=".jsonl or .tsv dataset files (scored together)")
  p.add_argument("-m", "--checkpoint", help="checkpoint .npz (default: the base --model)")
  cli.add_model_args(p)
  cli.add_eval_args(p)
  p.add_argument("--prompt", action="append", default=[], help="a candidate prompt (repeat)")
  p.add_argument("--prompts", help="file of candidate prompts, one a line (# comments)")
  p.add_argument("--metric", default="auc", choices=prompts.METRICS, help="rank by this")
  args = p.parse_args()
  candidates = list(args.prompt) + (prompts.read_prompt_file(args.prompts) if args.prompts else [])
  if not candidates:
    raise cli.UserError("give candidate prompts with --prompt TEXT (repeat) or --prompts FILE")
  args.prompt = candidates[0]
  opts = cli.eval_options(args, cli.stored_threshold(args.checkpoint or args.model))
  if args.pick_threshold or args.gallery or args.eval_set:
    raise cli.UserError("--pick-threshold, --gallery and --eval-set do not apply to ranking")
  honest = cli.report_options(args)
  examples = [e for f in args.files for e in data.read_examples(f, args.root)]
  lm = cli.load_model(args, model=args.checkpoint)

  def score(exs, prompt):
    return evaluate.evaluate(lm, exs, prompt=prompt, mode=opts.mode, batch_size=opts.batch_size,
                             threshold=opts.threshold, gif_frame=opts.gif_frame,
                             frames=honest.frames, combine=honest.combine)
  ranked = prompts.rank(examples, candidates, args.metric, score)
  print(f"{len(examples)} examples, {len(candidates)} prompts, threshold {opts.threshold:g}")
  print(prompts.format_table(ranked, args.metric))


if __name__ == "__main__":
  cli.run_main(main)
