#!/usr/bin/env python3
"""Rank candidate prompts: score a model on a dataset with each, best first.

  ./05-rank_prompts.py --model paligemma-3b-pt-224 dataset/data.jsonl \\
      --prompt "Is this image appropriate based on Federal Food, Drug, and Cosmetic Act?" \\
      --prompt "Is this ad lawful?" [--prompts prompts.txt] [--metric auc]

Every candidate replaces every row's prefix. The table shows the chosen
metric, ROC-AUC and the confusion counts at --threshold (0.5).
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import resolve
from palijudge.options import group, option
from palijudge.evaluation.prompts import PROMPT_METRICS


@dataclasses.dataclass(frozen=True)
class Config:
  files: tuple[str, ...] = option((), ".jsonl or .tsv dataset files (scored together)",
                                  positional="+")
  checkpoint: str | None = option(None, "checkpoint .npz (default: the base --model)",
                                  short="-m")
  root: str | None = cli.root_option()
  load: configs.LoadConfig = group(configs.LoadConfig, "model")
  eval: configs.EvalConfig = group(configs.EvalConfig, "evaluation", skip=(
      "prompt", "pick_threshold", "target", "gallery", "gallery_max"))
  prompt: tuple[str, ...] = option((), "a candidate prompt (repeat)", many=True)
  prompts: str | None = option(None, "file of candidate prompts, one a line (# comments)")
  metric: str = option("auc", "rank by this", choices=PROMPT_METRICS)


def main(cfg, project):
  import dataclasses
  from palijudge.evaluation import prompts, scoring
  candidates = list(cfg.prompt) + (prompts.read_prompt_file(project.find(cfg.prompts))
                                   if cfg.prompts else [])
  if not candidates:
    raise cli.UserError("give candidate prompts with --prompt TEXT (repeat) or --prompts FILE")
  r = resolve(cfg, project, [cfg.checkpoint] if cfg.checkpoint else None)
  ecfg = dataclasses.replace(r.eval, prompt=candidates[0])
  rows = [e for f in cfg.files for e in r.read(f)]
  lm = r.load()

  def score(exs, prompt):
    return scoring.evaluate(lm, exs, dataclasses.replace(ecfg, prompt=prompt))
  ranked = prompts.rank(rows, candidates, cfg.metric, score)
  print(f"{len(rows)} examples, {len(candidates)} prompts, threshold {ecfg.decision:g}")
  print(prompts.format_table(ranked, cfg.metric))


if __name__ == "__main__":
  cli.run(Config, main)
