"""Choosing the decision threshold on p(yes) from one split's scores.

The prediction is `yes` iff p(yes) >= threshold. Candidate thresholds lie
halfway between consecutive distinct scores of the picking split (below the
lowest score for "everything yes"), so the confusion counts reported for that
split are exactly what the threshold gives there, and a threshold never sits
on a score. Targets (`--target`):
- `f1`: the highest F-measure;
- `precision=P`: precision >= P with the highest recall (then the highest
  threshold among equals, i.e. the best precision for that recall);
- `recall=R`: recall >= R with the highest precision (then the highest recall).
A target no threshold reaches is reported with the best reachable value.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from palijudge.errors import UserError
from palijudge.metrics import Confusion, cumulative_counts

TARGETS = ("f1", "precision", "recall")


@dataclasses.dataclass(frozen=True)
class Target:
  kind: str                   # f1 | precision | recall
  value: float | None = None  # The floor for precision / recall.

  def __str__(self) -> str:
    return self.kind if self.value is None else f"{self.kind}={self.value:g}"


def parse_target(text: str) -> Target:
  """`f1`, `precision=0.95` or `recall=0.9` -> Target (UserError otherwise)."""
  kind, _, value = text.strip().lower().partition("=")
  if kind not in TARGETS:
    raise UserError(f"--target must be f1, precision=P or recall=R, got {text!r}")
  if kind == "f1":
    if value:
      raise UserError(f"--target f1 takes no value, got {text!r}")
    return Target("f1")
  try:
    v = float(value)
  except ValueError:
    raise UserError(f"--target {kind}=P needs a number in (0, 1], got {text!r}") from None
  if not 0 < v <= 1:
    raise UserError(f"--target {kind}={value}: the value must be in (0, 1]")
  return Target(kind, v)


@dataclasses.dataclass(frozen=True)
class Candidates:
  """Every distinct cut: threshold (K,) descending, with its confusion counts."""
  threshold: np.ndarray  # (K,) f64
  tp: np.ndarray         # (K,) i64
  fp: np.ndarray
  n_pos: int
  n_neg: int

  def confusion(self, k: int) -> Confusion:
    tp, fp = int(self.tp[k]), int(self.fp[k])
    return Confusion(tp=tp, tn=self.n_neg - fp, fp=fp, fn=self.n_pos - tp)


def candidates(labels: Sequence[bool], p_yes: Sequence[float]) -> Candidates:
  """Cuts halfway below each distinct score (see the module docstring)."""
  y = np.asarray(labels, bool)
  u, tp, fp = cumulative_counts(y, np.asarray(p_yes, np.float64))
  t = (u + np.r_[u[1:], 0.0]) / 2.0
  keep = t > 0  # A threshold of 0 would be outside (0, 1).
  return Candidates(t[keep], tp[keep], fp[keep], int(y.sum()), int((~y).sum()))


@dataclasses.dataclass(frozen=True)
class ThresholdPick:
  threshold: float
  split: str
  target: Target
  confusion: Confusion  # On the picking split, at `threshold`.
  reached: bool         # False: the target was out of reach; this is the best reachable.

  def describe(self) -> str:
    c = self.confusion
    what = "picked" if self.reached else "best reachable (target NOT reached)"
    return (f"threshold {self.threshold:.6g} {what} on {self.split} for --target "
            f"{self.target}: precision {c.precision:.4f}, recall {c.recall:.4f}, "
            f"F-measure {c.f_measure:.4f}")


def _best(c: Candidates, target: Target) -> tuple[int, bool]:
  """Index of the chosen cut and whether the target is reached."""
  tp, fp = c.tp.astype(np.float64), c.fp.astype(np.float64)
  prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
  rec = tp / c.n_pos
  if target.kind == "f1":
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0.0)
    return int(np.argmax(f1)), True
  floor, objective = ((prec, rec) if target.kind == "precision" else (rec, prec))
  ok = floor >= target.value - 1e-12
  if not ok.any():
    return int(np.lexsort((-objective, -floor))[0]), False
  # argmax picks the first (= highest threshold) among equal objectives.
  return int(np.argmax(np.where(ok, objective + 1e-9 * floor, -1.0))), True


def pick(labels: Sequence[bool], p_yes: Sequence[float], target: Target, split: str,
         strict: bool = True) -> ThresholdPick:
  """The threshold meeting `target` on this split (both classes needed).

  strict: an unreachable target raises UserError naming the best reachable
  value; otherwise that best reachable threshold is returned, reached=False.
  """
  y = np.asarray(labels, bool)
  if not y.any() or y.all():
    raise UserError(f"--pick-threshold {split}: needs both yes and no examples, "
                    f"got yes={int(y.sum())}, no={int((~y).sum())}")
  c = candidates(y, p_yes)
  k, reached = _best(c, target)
  result = ThresholdPick(float(c.threshold[k]), split, target, c.confusion(k), reached)
  if not reached and strict:
    got = getattr(result.confusion, target.kind)
    raise UserError(f"--target {target} cannot be reached on {split}: the best "
                    f"{target.kind} is {got:.4f} (threshold {result.threshold:.6g})")
  return result


def resolve_split(name: str, set_names: Sequence[str]) -> str:
  """The set `--pick-threshold NAME` means: an exact name, or a unique file stem.

  `valid` matches `dataset/set1/valid.jsonl`; `safe` matches an extra set
  named `safe`.
  """
  if name in set_names:
    return name
  hits = [s for s in set_names if os.path.splitext(os.path.basename(s))[0] == name]
  if len(hits) == 1:
    return hits[0]
  what = "matches several sets" if hits else "is not one of the evaluated sets"
  raise UserError(f"--pick-threshold {name} {what}: {', '.join(set_names)}")
