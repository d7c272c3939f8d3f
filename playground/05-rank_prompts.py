#!/usr/bin/env python3
"""Rank candidate prompts: score a model on a dataset with each, best first.

  ./05-rank_prompts.py --model paligemma-3b-pt-224 dataset/data.jsonl \\
      --prompt "Is this image appropriate based on Federal Food, Drug, and Cosmetic Act?" \\
      --prompt "Is this ad lawful?" [--prompts prompts.txt] [--metric auc]

Every candidate replaces every row's prefix. The table shows the chosen
metric, ROC-AUC and the confusion counts at --threshold (0.5).
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  from palijudge import prompts
  p = cli.parser(__doc__)
  p.add_argument("files", nargs="+", help=".jsonl or .tsv dataset files (scored together)")
  p.add_argument("-m", "--checkpoint", help="checkpoint .npz (default: the base --model)")
  cli.add_root_flag(p)
  cli.add_model_flags(p)
  cli.add_eval_flags(p, skip=("prompt", "pick_threshold", "target", "gallery", "gallery_max",
                              "eval_set"))
  p.add_argument("--prompt", action="append", default=[], help="a candidate prompt (repeat)")
  p.add_argument("--prompts", help="file of candidate prompts, one a line (# comments)")
  p.add_argument("--metric", default="auc", choices=prompts.PROMPT_METRICS, help="rank by this")
  return p


def main(args, project):
  import dataclasses
  from palijudge import checkpoint, evaluate, prompts
  from palijudge.data import examples
  candidates = list(args.prompt) + (prompts.read_prompt_file(project.find(args.prompts))
                                    if args.prompts else [])
  if not candidates:
    raise cli.UserError("give candidate prompts with --prompt TEXT (repeat) or --prompts FILE")
  model = project.find(args.checkpoint) if args.checkpoint else None
  args.prompt = candidates[0]
  ecfg = cli.eval_config(args, checkpoint.stored_threshold(model or project.find(args.model)))
  rows = [e for f in map(project.find, args.files)
          for e in examples.read_examples(f, cli.data_root(args, project, f))]
  lm = cli.load_model(args, project, model=model)

  def score(exs, prompt):
    return evaluate.evaluate(lm, exs, dataclasses.replace(ecfg, prompt=prompt))
  ranked = prompts.rank(rows, candidates, args.metric, score)
  print(f"{len(rows)} examples, {len(candidates)} prompts, threshold {ecfg.decision:g}")
  print(prompts.format_table(ranked, args.metric))


if __name__ == "__main__":
  cli.run(main, __file__, flags)
