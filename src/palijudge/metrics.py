"""Binary classification metrics for the yes/no judge (positive = "yes").

The printed block and the JSON line are part of the tool's interface: scripts
and people compare them, so the formats below are fixed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np

# Predict yes when p(yes) >= this, unless a threshold was given, stored or picked
# (configs.EvalConfig decides which).
DEFAULT_THRESHOLD = 0.5


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


def constant_answer(confusion: Confusion) -> str | None:
  """"yes" or "no" when every prediction counted is that answer, else None."""
  said_yes, said_no = confusion.tp + confusion.fp, confusion.tn + confusion.fn
  return "yes" if said_yes and not said_no else "no" if said_no and not said_yes else None


def constant_warning(confusion: Confusion, subject: str = "valid is") -> str:
  """One line when every prediction was the same answer ("" otherwise), with what that
  answer scores on this data's own class balance: a model that learned nothing but the
  majority class can look good (e.g. on 85 % yes data, always 'yes' scores F 0.92).
  The one warning of every training run, cross-validation and the search."""
  answer = constant_answer(confusion)
  if answer is None:
    return ""
  n_yes = confusion.tp + confusion.fn
  share = n_yes if answer == "yes" else confusion.total - n_yes
  always = Confusion(tp=n_yes, tn=0, fp=confusion.total - n_yes, fn=0) if answer == "yes" \
      else Confusion(tp=0, tn=confusion.total - n_yes, fp=0, fn=n_yes)
  scores = f"accuracy {always.accuracy:.2f}"
  if answer == "yes":
    scores += f" and F-measure {always.f_measure:.2f}"
  return (f"every prediction was {answer!r}, a constant answer whatever the image (the model "
          f"learned nothing of the images): {subject} {100 * share / confusion.total:.0f} % "
          f"{answer}, and answering {answer} to everything scores {scores}")


def summed(blocks: Sequence[dict[str, Any]]) -> Confusion | None:
  """The confusion counts of `blocks` (Confusion.to_dict(): metrics of one set, or of every
  CV fold) added up; None when there are none or a block has no counts."""
  keys = ("tp", "tn", "fp", "fn")
  if not blocks or not all(set(keys) <= set(m) for m in blocks):
    return None
  return Confusion(**{k: int(sum(m[k] for m in blocks)) for k in keys})


def one_class(blocks: Sequence[dict[str, Any]]) -> str | None:
  """`constant_answer` of stored metrics (`summed`): "yes"/"no" for a judge that learned
  nothing but a constant answer, whatever its score (CV summaries, the leaderboard)."""
  total = summed(blocks)
  return None if total is None else constant_answer(total)


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


# --- Scores: ranking and calibration of p(yes) -------------------------------

def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  y = np.asarray(labels, dtype=bool).reshape(-1)
  s = np.asarray(scores, dtype=np.float64).reshape(-1)
  if y.shape != s.shape:
    raise ValueError(f"{y.size} labels but {s.size} scores")
  return y, s


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
  """Area under the ROC curve (Mann-Whitney U, ties count 1/2); None with one class."""
  y, s = _arrays(labels, scores)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if not n_pos or not n_neg:
    return None
  order = np.argsort(s, kind="mergesort")
  sorted_s = s[order]
  ranks = np.empty(len(s), np.float64)
  # Average 1-based rank within each run of tied scores.
  _, start, count = np.unique(sorted_s, return_index=True, return_counts=True)
  avg = start + (count + 1) / 2.0
  ranks[order] = np.repeat(avg, count)
  u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def cumulative_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(distinct scores descending (K,), tp (K,), fp (K,)) for `predict yes iff s >= score`."""
  order = np.argsort(-s, kind="mergesort")
  s, y = s[order], y[order]
  last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # Last index of each tie run.
  tp = np.cumsum(y)[last]
  fp = (last + 1) - tp
  return s[last], tp.astype(np.int64), fp.astype(np.int64)


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
  """PR-AUC as sum_k (R_k - R_{k-1}) P_k over distinct thresholds (sklearn's AP)."""
  y, s = _arrays(labels, scores)
  n_pos = int(y.sum())
  if not n_pos:
    return None
  _, tp, fp = cumulative_counts(y, s)
  precision = tp / (tp + fp)
  recall = tp / n_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(labels: Sequence[bool], p_yes: Sequence[float]) -> float | None:
  """Mean squared error of p(yes) against the 0/1 label; None when empty."""
  y, p = _arrays(labels, p_yes)
  return float(np.mean((p - y) ** 2)) if len(y) else None


def expected_calibration_error(labels: Sequence[bool], p_yes: Sequence[float],
                               n_bins: int = 10) -> float | None:
  """ECE of p(yes): sum over equal-width bins of (n_b / N) |mean(y) - mean(p)|.

  Bin b holds b/n_bins <= p < (b+1)/n_bins (p = 1 goes in the last bin).
  """
  y, p = _arrays(labels, p_yes)
  if not len(y):
    return None
  b = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
  total = 0.0
  for k in np.unique(b):
    sel = b == k
    total += sel.sum() / len(y) * abs(y[sel].mean() - p[sel].mean())
  return float(total)


@dataclasses.dataclass(frozen=True)
class ScoreMetrics:
  """Threshold-free quality of p(yes); None where undefined (e.g. one class)."""
  roc_auc: float | None
  pr_auc: float | None
  brier: float | None
  ece: float | None

  @classmethod
  def compute(cls, labels: Sequence[bool], p_yes: Sequence[float]) -> ScoreMetrics:
    return cls(roc_auc(labels, p_yes), average_precision(labels, p_yes),
               brier(labels, p_yes), expected_calibration_error(labels, p_yes))

  def to_dict(self) -> dict[str, float | None]:
    return dataclasses.asdict(self)


def _fmt(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.4f}"


def format_scores(scores: ScoreMetrics, threshold: float | None = None,
                  invalid: tuple[int, int] | None = None) -> str:
  """Lines printed under the Result block: threshold, AUCs, calibration, invalid rate.

  `invalid` is (invalid answers, examples) in decode mode. AUCs print
  `n/a` when the set has one class only.
  """
  lines = []
  if threshold is not None:
    lines.append(f"  threshold: {threshold:.6g}")
  if invalid is not None:
    n_bad, n = invalid
    lines.append(f"  invalid answers: {n_bad}/{n} ({_ratio(n_bad, n):.4f})")
  lines += [f"  ROC-AUC:   {_fmt(scores.roc_auc)}",
            f"  PR-AUC:    {_fmt(scores.pr_auc)}",
            f"  Brier:     {_fmt(scores.brier)}",
            f"  ECE:       {_fmt(scores.ece)}"]
  return "\n".join(lines)
