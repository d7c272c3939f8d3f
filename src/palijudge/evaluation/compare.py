"""Paired comparison of two models on the same examples (17-compare.py, learn's --runs N).

Two models judged the same examples, so they are compared example by example
rather than block against block: which examples flipped (right under one
model, wrong under the other), an exact McNemar test on those flips, and
paired bootstrap intervals of B - A for precision, recall and ROC-AUC
(`stats`). A difference counts when its interval excludes 0 (McNemar: p <=
0.05); the report ends in one plain sentence saying which, if any, and which
comparisons are undefined (precision of a model that never says yes).

Examples are matched by identity: (image as written in the dataset, label);
an image listed twice pairs its k-th occurrences.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from palijudge import predictions
from palijudge.evaluation import stats
from palijudge.data.examples import Example
from palijudge.errors import UserError
from palijudge.configs import EvalConfig
from palijudge.evaluation.scoring import EvalResult, evaluate
from palijudge.loader import LoadedModel
from palijudge.predictions import PredRow

DIFFERENCES = ("precision", "recall", "auc")
NAMES = {"accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1",
         "auc": "ROC-AUC"}
ALPHA = 1 - stats.CONFIDENCE
WHOLE = "all rows"  # The set's name when two prediction files are compared whole.

Key = tuple[str, bool, int]  # (image, label, occurrence)


@dataclasses.dataclass(frozen=True)
class Side:
  """One model's judgements of one set, and the threshold its block shows (None: not shown)."""
  rows: list[PredRow]
  threshold: float | None = None

  @property
  def labels(self) -> np.ndarray:
    return np.array([r.label for r in self.rows], bool)

  @property
  def pred(self) -> np.ndarray:
    return np.array([r.pred for r in self.rows], bool)

  @property
  def p_yes(self) -> np.ndarray | None:
    if any(r.p_yes is None for r in self.rows):
      return None
    return np.array([r.p_yes for r in self.rows], np.float64)


def side_of(result: EvalResult) -> Side:
  return Side(predictions.rows_of(result), result.threshold if result.mode == "score" else None)


def judge_sets(lm: LoadedModel, sets: dict[str, Sequence[Example]], ecfg: EvalConfig,
               scorer=None) -> dict[str, Side]:
  """A model's Side on every named set (checkpoints in 17-compare.py); `scorer` (a probe)
  judges instead of `lm`'s own scores (see `scoring.Scorer`)."""
  return {name: side_of(evaluate(lm, examples, ecfg, desc=name, scorer=scorer))
          for name, examples in sets.items()}


def _keys(pairs: Sequence[tuple[str, bool]]) -> list[Key]:
  seen: collections.Counter = collections.Counter()
  out = []
  for image, label in pairs:
    out.append((image, bool(label), seen[(image, label)]))
    seen[(image, label)] += 1
  return out


def _row_keys(rows: Sequence[PredRow]) -> list[Key]:
  return _keys([(r.image, r.label) for r in rows])


def _named(key: Key) -> str:
  return f"{key[0]} ({'yes' if key[1] else 'no'})"


def select(rows: Sequence[PredRow], examples: Sequence[Example], source: str, set_name: str
           ) -> list[PredRow]:
  """The rows of a prediction file that hold the set's examples, in the set's order."""
  pool = dict(zip(_row_keys(rows), rows))
  keys = _keys([(e.raw_image, e.label) for e in examples])
  missing = [k for k in keys if k not in pool]
  if missing:
    raise UserError(f"{source}: no row for {len(missing)} example(s) of {set_name}, e.g. "
                    f"{_named(missing[0])}; were these predictions made on {set_name}?")
  return [pool[k] for k in keys]


def sides_from_file(path: str, sets: dict[str, Sequence[Example]], threshold: float | None
                    ) -> dict[str, Side]:
  """A prediction file's Side on every named set, or on all its rows when no set is named."""
  rows = predictions.read(path, threshold)
  if not sets:
    return {WHOLE: Side(rows, threshold)}
  return {name: Side(select(rows, examples, path, name), threshold)
          for name, examples in sets.items()}


def align(a: Side, b: Side, set_name: str) -> Side:
  """B's rows in A's order; a UserError when the two do not hold the same examples."""
  ka, kb = _row_keys(a.rows), _row_keys(b.rows)
  only_a, only_b = sorted(set(ka) - set(kb)), sorted(set(kb) - set(ka))
  if only_a or only_b:
    eg = _named((only_a or only_b)[0])
    raise UserError(f"{set_name}: A and B were not judged on the same examples ({len(only_a)} "
                    f"only in A, {len(only_b)} only in B, e.g. {eg}); compare the same set")
  by_key = dict(zip(kb, b.rows))
  return Side([by_key[k] for k in ka], b.threshold)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A against B on one set (B aligned to A's order)."""
  name: str
  a: Side
  b: Side
  mcnemar: stats.McNemar
  differences: list[stats.Difference]  # B - A, in DIFFERENCES order.
  seed: int
  resamples: int

  @property
  def n(self) -> int:
    return len(self.a.rows)

  def too_small(self) -> bool:
    """Some metric's interval judges nothing on this set (stats.Difference.too_small)."""
    return any(d.too_small for d in self.differences)


def compare(name: str, a: Side, b: Side, seed: int = stats.SEED,
            resamples: int = stats.RESAMPLES) -> Comparison:
  b = align(a, b, name)
  y, pa, pb = a.labels, a.pred, b.pred
  diffs = [stats.paired_difference(m, y, pa, pb, a.p_yes, b.p_yes, seed, resamples)
           for m in DIFFERENCES]
  return Comparison(name, a, b, stats.mcnemar(pa == y, pb == y), diffs, seed, resamples)


def verdict(c: Comparison) -> str:
  """The one plain sentence the comparison ends with."""
  parts, notes = [], []
  m = c.mcnemar
  if m.pvalue <= ALPHA:
    win, lose = ("B", "A") if m.only_b > m.only_a else ("A", "B")
    parts.append(f"{win} is right more often than {lose}: {max(m.only_a, m.only_b)} against "
                 f"{min(m.only_a, m.only_b)} of the examples only one gets right (exact McNemar "
                 f"p = {m.pvalue:.3f})")
  for d in c.differences:
    if d.undefined:
      notes.append(f"{NAMES[d.metric]} cannot be compared ({d.undefined})")
    if d.too_small:
      notes.append(_too_small(c, d))
    if not d.detectable:
      continue
    b_wins = d.interval.low > 0
    win, lose = ("B", "A") if b_wins else ("A", "B")
    iv = d.interval if b_wins else d.interval.negated()
    lead = d.delta if b_wins else -d.delta
    parts.append(f"{win} is better than {lose} on {NAMES[d.metric]}: {lead:+.2f}, "
                 f"{stats.CONFIDENCE:.0%} interval {iv.text(2, signed=True)}")
  if not parts:
    judged = ["accuracy"] + [NAMES[d.metric] for d in c.differences
                             if d.interval is not None and not d.too_small]
    by = " by " + " or ".join(filter(None, [", ".join(judged[:-1]), judged[-1]]))
    parts = [f"No difference detectable on {c.n} examples{by if c.too_small() else ''}"]
  return "; ".join(parts + notes) + "."


def _too_small(c: Comparison, d: stats.Difference) -> str:
  """Why `d`'s interval judges nothing: too few yes examples (recall) or answers (precision)."""
  if d.metric == "recall":
    count, what = int(c.a.labels.sum()), "yes example"
  else:
    count, what = int(min(c.a.pred.sum(), c.b.pred.sum())), "yes answer"
  return (f"the set is too small to judge {NAMES[d.metric]} ({count} {what}"
          f"{'' if count == 1 else 's'} in {c.n}: {d.left_out:.0%} of the resamples had none)")


def _flips(c: Comparison, right: str, max_list: int) -> list[str]:
  """Examples that `right` (A or B) judged correctly and the other did not."""
  winner, loser = (c.a, c.b) if right == "A" else (c.b, c.a)
  idx = [i for i, (w, l) in enumerate(zip(winner.rows, loser.rows))
         if w.pred == w.label and l.pred != l.label]
  other = "B" if right == "A" else "A"
  lines = [f"  {right} right, {other} wrong: {len(idx)}"]
  p = lambda r: "" if r.p_yes is None else f" (p {r.p_yes:.3f})"
  yn = lambda v: "yes" if v else "no"
  for i in idx[:max_list]:
    ra, rb = c.a.rows[i], c.b.rows[i]
    lines.append(f"    {ra.image} ({yn(ra.label)}): A {yn(ra.pred)}{p(ra)}, B {yn(rb.pred)}{p(rb)}")
  if len(idx) > max_list:
    lines.append(f"    ... and {len(idx) - max_list} more")
  return lines


def format_comparison(c: Comparison, max_list: int = 20) -> str:
  """Both Result blocks, the flipped examples, McNemar, the paired intervals, the verdict."""
  m = c.mcnemar
  lines = [predictions.format_rows(c.a.rows, f"{c.name} (A)", "Result", c.a.threshold),
           predictions.format_rows(c.b.rows, f"{c.name} (B)", "Result", c.b.threshold),
           f"Disagreements: {m.only_a + m.only_b} of {c.n} examples"]
  lines += _flips(c, "A", max_list) + _flips(c, "B", max_list)
  lines += [f"  exact McNemar test on correctness: p = {m.pvalue:.4f}",
            (f"Paired bootstrap of B - A ({c.resamples} resamples of the examples, seed "
             f"{c.seed}; ROC-AUC within each label):")]
  for d in c.differences:
    if d.undefined:
      a, b = (("n/a" if v is None else f"{v:.4f}") for v in (d.a, d.b))
      lines.append(f"  {NAMES[d.metric] + ':':11s}A {a}  B {b}  B - A undefined ({d.undefined})")
      continue
    lines.append(f"  {NAMES[d.metric] + ':':11s}A {d.a:.4f}  B {d.b:.4f}  B - A {d.delta:+.4f}  "
                 f"{stats.percent()} interval {d.interval.text(4, signed=True)}"
                 + (f"  (too few examples: {d.left_out:.0%} of the resamples undefined)"
                    if d.too_small else ""))
  return "\n".join(lines + [verdict(c)])


# --- The lottery: --runs N --select METRIC ---------------------------------------


def lottery(names: Sequence[str], scores: Sequence[float], results: Sequence[EvalResult],
            metric: str, best: int, seed: int = stats.SEED,
            resamples: int = stats.RESAMPLES) -> list[str]:
  """Lines after `--runs N`: the valid metric's spread over the runs, each run's interval,
  and whether the best run's lead over the runner-up is inside the noise."""
  finite = [s for s in scores if np.isfinite(s)]
  lines = [f"valid {metric} over {len(scores)} runs: "
           + (stats.spread(finite).text() if finite else "undefined")]
  for name, score, res in zip(names, scores, results):
    iv = stats.interval(metric, res.labels, res.pred, res.p_yes, seed, resamples)
    shown = f"{score:.4f}" if np.isfinite(score) else "n/a"
    lines.append(f"  {name}: {shown}  {stats.percent()} interval "
                 f"{'n/a' if iv is None else iv.text(4)}")
  runner = max((i for i in range(len(scores)) if i != best), key=lambda i: scores[i])
  return lines + [lead(names[best], names[runner], results[best], results[runner], metric,
                       seed, resamples)]


def lead(best_name: str, runner_name: str, best: EvalResult, runner: EvalResult, metric: str,
         seed: int = stats.SEED, resamples: int = stats.RESAMPLES) -> str:
  """Whether `best`'s lead over `runner` (same examples) is beyond the noise, in one line.

  One test decides, named in the line, and only its number is printed: the exact
  McNemar test for accuracy (correctness at the threshold is what it tests), a
  paired bootstrap of the difference for the others (McNemar says nothing about
  precision, recall, F1 or ROC-AUC, which the threshold does not even enter).
  Equal scores are a tie, which run order breaks.
  """
  y = best.labels
  d = stats.paired_difference(metric, y, runner.pred, best.pred, runner.p_yes, best.p_yes,
                              seed, resamples, (runner_name, best_name))
  same = (f": inside the noise; on {len(y)} validation examples the two runs are "
          f"indistinguishable by {metric}")
  if d.undefined:
    return (f"lead of {best_name} over {runner_name}: undefined valid {metric} "
            f"({d.undefined}); the runs cannot be told apart by {metric}")
  if d.delta == 0:
    return (f"{best_name} and {runner_name} tie on valid {metric} ({d.b:.4f}); {best_name} "
            f"is kept because it ran first{same}")
  head = f"lead of {best_name} over {runner_name}: {d.delta:+.4f} valid {metric}"
  if metric == "accuracy":
    m = stats.mcnemar(runner.pred == y, best.pred == y)
    test = (f"decided by the exact McNemar test on the {m.only_a + m.only_b} examples only "
            f"one run gets right ({m.only_b} against {m.only_a}): p = {m.pvalue:.3f}")
    beyond = m.pvalue <= ALPHA
  else:
    test = (f"decided by a paired bootstrap of the {NAMES[metric]} difference ({resamples} "
            f"resamples; McNemar's test is about correctness at the threshold, not "
            f"{NAMES[metric]}): {stats.percent()} interval {d.interval.text(4, signed=True)}")
    beyond = d.detectable
  if not beyond:
    return f"{head}, {test}{same}"
  return f"{head}, {test}: beyond the noise on {len(y)} validation examples"
