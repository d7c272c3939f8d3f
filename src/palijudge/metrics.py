"""Binary classification metrics for the yes/no judge (positive = "yes").

The printed block and the JSON line are part of the tool's interface: scripts
and people compare them, so the formats below are fixed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence


def _ratio(num: float, den: float) -> float:
  """num / den, or 0.0 when den is 0 (e.g. precision with no positives)."""
  return num / den if den else 0.0


@dataclasses.dataclass(frozen=True)
class Confusion:
  """Confusion counts; positive = label yes = True."""
  tp: int
  tn: int
  fp: int
  fn: int

  @property
  def total(self) -> int:
    return self.tp + self.tn + self.fp + self.fn

  @property
  def accuracy(self) -> float:
    return _ratio(self.tp + self.tn, self.total)

  @property
  def precision(self) -> float:
    return _ratio(self.tp, self.tp + self.fp)

  @property
  def recall(self) -> float:
    return _ratio(self.tp, self.tp + self.fn)

  @property
  def f_measure(self) -> float:
    """2 p r / (p + r), computed from p and r in exactly this order.

    (Not 2 tp / (2 tp + fp + fn): the printed digits must stay the same,
    e.g. p = r = 0.8 gives 0.8000000000000002.)
    """
    p, r = self.precision, self.recall
    return _ratio(2 * p * r, p + r)

  @classmethod
  def from_labels(cls, labels: Sequence[bool], preds: Sequence[bool]
                  ) -> Confusion:
    """Counts from parallel sequences of true labels and predictions."""
    if len(labels) != len(preds):
      raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    tp = tn = fp = fn = 0
    for y, p in zip(labels, preds):
      y, p = bool(y), bool(p)
      tp += y and p
      tn += not y and not p
      fp += p and not y
      fn += y and not p
    return cls(tp=int(tp), tn=int(tn), fp=int(fp), fn=int(fn))

  def to_dict(self) -> dict[str, Any]:
    """Counts and metrics, in the order json_line prints them."""
    return {"tp": self.tp, "tn": self.tn, "fp": self.fp, "fn": self.fn,
            "accuracy": self.accuracy, "precision": self.precision,
            "recall": self.recall, "f_measure": self.f_measure}


def format_block(confusion: Confusion, name: str, heading: str = "Result"
                 ) -> str:
  """The human-readable report (no trailing newline); floats use str()."""
  c = confusion
  return "\n".join([
      f"{heading}: {name}",
      f"  Tp={c.tp} Tn={c.tn} Fp={c.fp} Fn={c.fn}",
      f"  accuracy:  {c.accuracy}",
      f"  precision: {c.precision}",
      f"  recall:    {c.recall}",
      f"  F-measure: {c.f_measure}",
  ])


def json_line(confusion: Confusion, name: str, **extra: Any) -> str:
  """One-line JSON record: {"file": name, counts, metrics, **extra}."""
  record = {"file": name, **confusion.to_dict()}
  clash = sorted(set(record) & set(extra))
  if clash:
    raise ValueError(f"extra keys clash with the metrics: {clash}")
  record.update(extra)
  return json.dumps(record)
