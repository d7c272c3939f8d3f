"""How sure a metric is: intervals, paired tests and spreads (numpy, scipy, statsmodels; no jax).

- Accuracy, precision and recall are proportions (of all examples, of the
  predicted yes, of the true yes): 95 % Wilson score intervals (statsmodels).
- ROC-AUC and F1 are not: a percentile bootstrap over examples, seeded.
  For ROC-AUC each resample draws the yes and the no examples separately
  (a stratified bootstrap, pROC's default), so every resample keeps both
  classes and the AUC is always defined; AUC does not depend on the class
  balance. The other metrics do (precision moves with the share of yes), so
  they resample the examples as they come. scipy.stats.bootstrap is not used
  because it refuses a class of one example, which a 10-image valid set
  often has; the percentiles are numpy's, as scipy's are.
- Two models on the same examples: the same resamples judge both (a paired
  bootstrap of B - A), and an exact McNemar test (statsmodels) on which
  examples only one of them gets right.
- Several runs or folds: mean, standard deviation, min-max and a Student t
  interval of the mean (scipy).

Undefined ratios count as 0.0 inside a one-model resample, as the Result
block prints them (precision with no predicted yes). A paired comparison does
not: a metric undefined on the whole set for either model (precision of a
model that never says yes, recall without a yes example) makes the comparison
undefined (`Difference.undefined` says why), and the resamples where either is
undefined are left out of its interval.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from palijudge.metrics import Confusion

CONFIDENCE = 0.95
RESAMPLES = 2000   # Bootstrap resamples, drawn from SEED: the same interval every time.
SEED = 0
METRICS = ("accuracy", "precision", "recall", "f1", "auc")  # learn's --select names.
_CHUNK = 250       # Resamples drawn at once (bounds memory on a 10k-row set).


@dataclasses.dataclass(frozen=True)
class Interval:
  low: float
  high: float

  def contains(self, x: float) -> bool:
    return self.low <= x <= self.high

  def text(self, digits: int = 3, signed: bool = False) -> str:
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"[{f.format(self.low)}, {f.format(self.high)}]"

  def negated(self) -> Interval:
    return Interval(-self.high, -self.low)

  def to_list(self) -> list[float]:
    return [self.low, self.high]


def _text(iv: Interval | None, digits: int = 3) -> str:
  return "n/a" if iv is None else iv.text(digits)


def percent() -> str:
  """The confidence as printed: 95%."""
  return f"{CONFIDENCE:.0%}"


def wilson(successes: int, trials: int) -> Interval | None:
  """Wilson score interval of successes/trials; None when there are no trials."""
  if trials <= 0:
    return None
  from statsmodels.stats.proportion import proportion_confint  # Slow import: only when used.
  lo, hi = proportion_confint(successes, trials, alpha=1 - CONFIDENCE, method="wilson")
  return Interval(max(0.0, float(lo)), min(1.0, float(hi)))


def _fraction(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den, 0.0 where den is 0 (metrics._ratio, element-wise)."""
  return np.divide(num, den, out=np.zeros(np.shape(num), np.float64), where=den > 0)


def _auc(w: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
  """ROC-AUC (Mann-Whitney U, ties 1/2) of each row of example weights w (b, n)."""
  order = np.argsort(p, kind="mergesort")
  starts = np.r_[0, np.flatnonzero(np.diff(p[order])) + 1]  # Runs of tied scores.
  w, y = w[:, order], y[order]
  pos = np.add.reduceat(w * y, starts, axis=1)
  neg = np.add.reduceat(w * ~y, starts, axis=1)
  below = np.cumsum(neg, axis=1) - neg
  return _fraction((pos * (below + 0.5 * neg)).sum(1), pos.sum(1) * neg.sum(1))


def statistic(metric: str, w: np.ndarray, y: np.ndarray, pred: np.ndarray,
              p: np.ndarray | None) -> np.ndarray:
  """`metric` of each resample: w (b, n) says how often each example was drawn; y, pred (n,)
  bool, p (n,) p(yes) (AUC only)."""
  if metric == "auc":
    return _auc(w, y, p)
  tp = w @ (y & pred)
  if metric == "accuracy":
    return w @ (y == pred) / w.sum(1)
  precision = _fraction(tp, w @ pred)
  recall = _fraction(tp, w @ y)
  if metric == "precision":
    return precision
  if metric == "recall":
    return recall
  if metric == "f1":  # From p and r, as Confusion.f_measure.
    return _fraction(2 * precision * recall, precision + recall)
  raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def resample_weights(labels, seed: int = SEED, resamples: int = RESAMPLES,
                     stratified: bool = False):
  """Yields (b, n) draw counts per example, in chunks: n draws with replacement.

  `stratified` draws within each label, which keeps the class counts of the
  set in every resample (both classes stay present whenever the set has both).
  """
  y = np.asarray(labels, bool)
  n = len(y)
  groups = (np.flatnonzero(y), np.flatnonzero(~y)) if stratified else (np.arange(n),)
  strata = [s for s in groups if len(s)]
  rng = np.random.default_rng(seed)
  for start in range(0, resamples, _CHUNK):
    b = min(_CHUNK, resamples - start)
    idx = np.concatenate([s[rng.integers(0, len(s), (b, len(s)))] for s in strata], axis=1)
    flat = (idx + n * np.arange(b)[:, None]).ravel()
    yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _percentiles(values: np.ndarray) -> Interval:
  tail = (1 - CONFIDENCE) / 2 * 100
  lo, hi = np.percentile(values, [tail, 100 - tail])
  return Interval(float(lo), float(hi))


def _defined(metric: str, labels: np.ndarray) -> bool:
  """AUC needs both classes; the others are defined on any non-empty set."""
  return len(labels) > 0 and (metric != "auc" or 0 < labels.sum() < len(labels))


def bootstrap(metric: str, labels, pred, p_yes=None, seed: int = SEED,
              resamples: int = RESAMPLES) -> Interval | None:
  """Percentile bootstrap interval of one model's `metric`; None where undefined."""
  y, yhat = np.asarray(labels, bool), np.asarray(pred, bool)
  p = None if p_yes is None else np.asarray(p_yes, np.float64)
  if not _defined(metric, y) or (metric == "auc" and p is None):
    return None
  values = np.concatenate([statistic(metric, w, y, yhat, p)
                           for w in resample_weights(y, seed, resamples, metric == "auc")])
  return _percentiles(values)


def value(metric: str, labels, pred, p_yes=None) -> float | None:
  """`metric` on the whole set (the point the intervals are around); None where undefined."""
  y = np.asarray(labels, bool)
  if not _defined(metric, y) or (metric == "auc" and p_yes is None):
    return None
  p = None if p_yes is None else np.asarray(p_yes, np.float64)
  return float(statistic(metric, np.ones((1, len(y))), y, np.asarray(pred, bool), p)[0])


_SET_REASONS = ("no examples", "no yes example", "one class only")  # About the set, not a model.


def undefined(metric: str, labels, pred, p_yes=None) -> str | None:
  """Why `metric` has no value for this model on this set (a 0/0 ratio), or None."""
  y, yhat = np.asarray(labels, bool), np.asarray(pred, bool)
  if len(y) == 0:
    return "no examples"
  if metric == "precision" and not yhat.any():
    return "never says yes"
  if metric == "recall" and not y.any():
    return "no yes example"
  if metric == "auc" and p_yes is None:
    return "has no p(yes)"
  if metric == "auc" and not _defined(metric, y):
    return "one class only"
  return None


def _ratios_defined(metric: str, w: np.ndarray, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """(b,) bool: the resamples where `metric`'s ratio has a denominator."""
  if metric == "precision":
    return w @ pred > 0
  if metric == "recall":
    return w @ y > 0
  return np.ones(len(w), bool)


def interval(metric: str, labels, pred, p_yes=None, seed: int = SEED,
             resamples: int = RESAMPLES) -> Interval | None:
  """Wilson for accuracy, precision and recall; the bootstrap for F1 and AUC."""
  y, yhat = np.asarray(labels, bool), np.asarray(pred, bool)
  if metric in ("accuracy", "precision", "recall"):
    c = Confusion.from_labels(y.tolist(), yhat.tolist())
    successes, trials = {"accuracy": (c.tp + c.tn, c.total), "precision": (c.tp, c.tp + c.fp),
                         "recall": (c.tp, c.tp + c.fn)}[metric]
    return wilson(successes, trials)
  return bootstrap(metric, y, yhat, p_yes, seed, resamples)


@dataclasses.dataclass(frozen=True)
class Intervals:
  """The line added under every Result/Aggregate block; None prints n/a."""
  accuracy: Interval | None
  precision: Interval | None
  recall: Interval | None
  roc_auc: Interval | None

  @classmethod
  def of(cls, labels, pred, p_yes=None, seed: int = SEED,
         resamples: int = RESAMPLES) -> Intervals:
    get = lambda m: interval(m, labels, pred, p_yes, seed, resamples)
    return cls(get("accuracy"), get("precision"), get("recall"),
               None if p_yes is None else get("auc"))

  def line(self) -> str:
    return (f"  {percent()} interval: accuracy {_text(self.accuracy)}  precision "
            f"{_text(self.precision)}  recall {_text(self.recall)}  ROC-AUC {_text(self.roc_auc)}")

  def to_dict(self, auc_key: str = "roc_auc") -> dict[str, list[float] | None]:
    """{accuracy_ci, precision_ci, recall_ci, <auc_key>_ci}: [low, high] or None."""
    pairs = (("accuracy", self.accuracy), ("precision", self.precision),
             ("recall", self.recall), (auc_key, self.roc_auc))
    return {f"{k}_ci": None if v is None else v.to_list() for k, v in pairs}


# --- Two models on the same examples ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class McNemar:
  """Exact McNemar test on correctness: only the examples exactly one model got right count."""
  only_a: int     # A right, B wrong.
  only_b: int     # B right, A wrong.
  pvalue: float


def mcnemar(correct_a, correct_b) -> McNemar:
  from statsmodels.stats.contingency_tables import mcnemar as exact_test
  a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
  table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
  return McNemar(table[0][1], table[1][0], float(exact_test(table, exact=True).pvalue))


@dataclasses.dataclass(frozen=True)
class Difference:
  """B - A on one metric: both points and the paired bootstrap interval of the difference."""
  metric: str
  a: float | None
  b: float | None
  interval: Interval | None   # None where the metric is undefined.
  undefined: str | None = None  # Why the comparison is undefined, e.g. "A never says yes".
  left_out: float = 0.0  # Fraction of resamples where the metric had no denominator (dropped).

  @property
  def delta(self) -> float | None:
    return None if self.a is None or self.b is None else self.b - self.a

  @property
  def detectable(self) -> bool:
    """The interval excludes 0: B and A differ beyond the resampling noise (not on a set too
    small to judge the metric, where the interval only describes the lucky resamples)."""
    return (self.interval is not None and not self.too_small
            and not self.interval.contains(0.0))

  @property
  def too_small(self) -> bool:
    """More resamples had no denominator (no yes example for recall, no yes answer for
    precision) than the interval's tail holds: the set cannot judge the metric, the interval
    neither shows a difference nor rules one out."""
    return self.left_out > (1 - CONFIDENCE) / 2


def paired_difference(metric: str, labels, pred_a, pred_b, p_a=None, p_b=None,
                      seed: int = SEED, resamples: int = RESAMPLES,
                      names: tuple[str, str] = ("A", "B")) -> Difference:
  """B - A on `metric`, both judged on the same resamples of the examples (`names` name them
  where the comparison is undefined)."""
  y = np.asarray(labels, bool)
  ya, yb = np.asarray(pred_a, bool), np.asarray(pred_b, bool)
  pa = None if p_a is None else np.asarray(p_a, np.float64)
  pb = None if p_b is None else np.asarray(p_b, np.float64)
  why = (undefined(metric, y, ya, pa), undefined(metric, y, yb, pb))
  a = None if why[0] else value(metric, y, ya, pa)
  b = None if why[1] else value(metric, y, yb, pb)
  if any(why):
    text = (why[0] if why[0] == why[1] and why[0] in _SET_REASONS else
            ", ".join(f"{name} {reason}" for name, reason in zip(names, why) if reason))
    return Difference(metric, a, b, None, text)
  diffs = []
  for w in resample_weights(y, seed, resamples, metric == "auc"):
    keep = _ratios_defined(metric, w, y, ya) & _ratios_defined(metric, w, y, yb)
    diffs.append((statistic(metric, w, y, yb, pb) - statistic(metric, w, y, ya, pa))[keep])
  diffs = np.concatenate(diffs)
  if not diffs.size:
    return Difference(metric, a, b, None, "undefined in every resample")
  return Difference(metric, a, b, _percentiles(diffs), left_out=1 - diffs.size / resamples)


# --- Spread over runs or folds ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spread:
  """Values of one metric over runs or folds.

  std is the sample standard deviation (ddof=1, 0.0 for one value), the one
  the interval of the mean is built from: Student's t, clipped to [0, 1]
  (metrics are proportions); None with one value.
  """
  n: int
  mean: float
  std: float
  low: float
  high: float
  interval: Interval | None

  def text(self, digits: int = 4) -> str:
    iv = "n/a" if self.interval is None else self.interval.text(digits)
    return (f"mean {self.mean:.{digits}f}  std {self.std:.{digits}f}  min {self.low:.{digits}f}"
            f"  max {self.high:.{digits}f}  {percent()} t-interval of the mean {iv}")


def sample_std(values) -> float:
  """Standard deviation with ddof=1 (what a t interval uses); 0.0 for a single value."""
  v = np.asarray(values, np.float64)
  return float(v.std(ddof=1)) if v.size > 1 else 0.0


def spread(values: Sequence[float]) -> Spread:
  from scipy import stats as st
  v = np.asarray([float(x) for x in values], np.float64)
  if v.size == 0:
    raise ValueError("spread of no values")
  mean = float(v.mean())
  iv = None
  if v.size > 1:
    sem = float(st.sem(v))
    lo, hi = (mean, mean) if sem == 0 else st.t.interval(CONFIDENCE, v.size - 1, loc=mean,
                                                          scale=sem)
    iv = Interval(max(0.0, float(lo)), min(1.0, float(hi)))
  return Spread(int(v.size), mean, sample_std(v), float(v.min()), float(v.max()), iv)
