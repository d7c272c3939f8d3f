"""Ranking candidate prompts (`05-rank_prompts.py`): each prompt scored on the same
examples by an injected evaluation, best first by the chosen metric.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from palijudge.data.examples import Example, read_lines
from palijudge.errors import UserError
from palijudge.metrics import Confusion, ScoreMetrics


PROMPT_METRICS = ("auc", "ap", "f1", "precision", "recall", "accuracy")


def read_prompt_file(path: str) -> list[str]:
  """One prompt a line; blank lines and lines starting with # are skipped."""
  prompts = [t.strip() for _, t in read_lines(path) if not t.lstrip().startswith("#")]
  prompts = [p for p in prompts if p]
  if not prompts:
    raise UserError(f"{path}: no prompts (one a line; # starts a comment)")
  return prompts


@dataclasses.dataclass(frozen=True)
class PromptScore:
  prompt: str
  value: float | None      # The chosen metric (None: undefined, e.g. AUC with one class).
  scores: ScoreMetrics
  confusion: Confusion


def metric_value(metric: str, scores: ScoreMetrics, c: Confusion) -> float | None:
  return {"auc": scores.roc_auc, "ap": scores.pr_auc, "f1": c.f_measure,
          "precision": c.precision, "recall": c.recall, "accuracy": c.accuracy}[metric]


def rank(examples: Sequence[Example], prompts: Sequence[str], metric: str,
         evaluate_fn: Callable[[list[Example], str], object]) -> list[PromptScore]:
  """Scores each prompt with `evaluate_fn(examples, prompt) -> EvalResult`; best first.

  Ties keep the order the prompts were given in; undefined values go last.
  """
  if metric not in PROMPT_METRICS:
    raise UserError(f"--metric must be one of {', '.join(PROMPT_METRICS)}, got {metric!r}")
  if len(set(prompts)) != len(prompts):
    raise UserError("the same prompt is given twice")
  plain = [dataclasses.replace(e, prefix="") for e in examples]
  out = []
  for prompt in prompts:
    res = evaluate_fn(plain, prompt)
    scores, conf = res.scores, res.confusion
    out.append(PromptScore(prompt, metric_value(metric, scores, conf), scores, conf))
  order = sorted(range(len(out)), key=lambda i: (out[i].value is None, -(out[i].value or 0), i))
  return [out[i] for i in order]


def _f(x: float | None) -> str:
  return "   n/a" if x is None else f"{x:.4f}"


def format_table(ranked: Sequence[PromptScore], metric: str) -> str:
  """rank, metric, AUC, confusion counts, prompt: one line each, best first."""
  head = f"rank  {metric[:9]:>9}  {'AUC':>6}  {'Tp':>5} {'Tn':>5} {'Fp':>5} {'Fn':>5}  prompt"
  lines = [head]
  for i, r in enumerate(ranked, start=1):
    c = r.confusion
    lines.append(f"{i:>4}  {_f(r.value):>9}  {_f(r.scores.roc_auc):>6}  "
                 f"{c.tp:>5} {c.tn:>5} {c.fp:>5} {c.fn:>5}  {r.prompt}")
  return "\n".join(lines)
