"""Curves (pure numpy) and PNG plots (matplotlib, Agg backend, imported lazily).

Positive = yes. `roc_curve`/`pr_curve` follow scikit-learn's definitions
(ties share one threshold); the areas under them are `metrics.roc_auc` and
`metrics.average_precision`. Every `render_*` writes one PNG atomically and
returns its path.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from palijudge import files, metrics


@dataclasses.dataclass(frozen=True)
class Curve:
  x: np.ndarray
  y: np.ndarray
  thresholds: np.ndarray


def _counts(labels: Sequence[bool], scores: Sequence[float]):
  """(tp, fp, threshold) per distinct score, descending (see metrics.cumulative_counts)."""
  thr, tp, fp = metrics.cumulative_counts(np.asarray(labels, bool),
                                          np.asarray(scores, np.float64))
  return tp.astype(np.float64), fp.astype(np.float64), thr


def roc_curve(labels: Sequence[bool], scores: Sequence[float]) -> Curve | None:
  """(fpr, tpr) from (0, 0); None unless both classes are present."""
  tps, fps, thr = _counts(labels, scores)
  if tps.size == 0 or tps[-1] == 0 or fps[-1] == 0:
    return None
  fpr = np.r_[0.0, fps / fps[-1]]
  tpr = np.r_[0.0, tps / tps[-1]]
  return Curve(fpr, tpr, np.r_[np.inf, thr])


def pr_curve(labels: Sequence[bool], scores: Sequence[float]) -> Curve | None:
  """(recall, precision) by decreasing threshold; None without positives."""
  tps, fps, thr = _counts(labels, scores)
  if tps.size == 0 or tps[-1] == 0:
    return None
  precision = tps / (tps + fps)
  recall = tps / tps[-1]
  return Curve(np.r_[0.0, recall], np.r_[1.0, precision], np.r_[np.inf, thr])


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path: str | os.PathLike) -> Path:
  path = Path(path)
  with files.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
  _pyplot().close(fig)
  return path


_STAGE = re.compile(r"^(.*)stage (\d+)$")  # learn's stage names: "stage 2", "run 3, stage 2".


def stage_axis(steps: Sequence[float], stages: Sequence[str]) -> np.ndarray:
  """One step axis for a run's stages: stage N+1 continues after the last step of stage N
  of the same run ("run 2, stage 2" after "run 2, stage 1"); separate runs (alternatives,
  not a sequence) and other names keep their own steps."""
  last: dict[str, float] = {}
  for step, name in zip(steps, stages):
    if np.isfinite(step):
      last[name] = max(last.get(name, step), step)

  def offset(name: str) -> float:
    m = _STAGE.match(name)
    before = f"{m.group(1)}stage {int(m.group(2)) - 1}" if m else None
    return offset(before) + last[before] if before in last else 0.0
  return np.asarray([step + offset(name) for step, name in zip(steps, stages)], np.float64)


def loss_figure(steps: Sequence[float], loss: Sequence[float], lr: Sequence[float],
                grad_norm: Sequence[float], title: str = "", stages: Sequence[str] | None = None,
                extra: dict[str, Sequence[float]] | None = None):
  """The loss plot's figure: loss per step, one colour per stage (legend), stages one after
  another on the step axis (`stage_axis`), log scale when the loss spans decades; any
  `extra` logged column (e.g. a valid metric per evaluation) as labelled points on a right
  axis; lr (solid) and grad norm (dotted, right axis) below, per stage in its colour."""
  plt = _pyplot()
  fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True,
                                 gridspec_kw={"height_ratios": [2, 1]})
  names = list(stages) if stages is not None and len(stages) == len(steps) else [""] * len(steps)
  x, y = stage_axis(np.asarray(steps, np.float64), names), np.asarray(loss, np.float64)
  lr, grad = np.asarray(lr, np.float64), np.asarray(grad_norm, np.float64)
  has_grad = grad.shape == x.shape and bool(np.any(np.isfinite(grad)))
  ax3 = ax2.twinx() if has_grad else None
  for i, stage in enumerate(dict.fromkeys(names)):
    at = np.array([n == stage for n in names])
    ax1.plot(x[at], y[at], lw=1, color=f"C{i}", label=stage or "loss")
    ax2.plot(x[at], lr[at], lw=1, color=f"C{i}", label=f"lr, {stage}" if stage else "lr")
    if i and x[at].size:  # Where this stage starts.
      ax1.axvline(x[at].min(), color="gray", lw=0.6, ls=":")
    if ax3 is not None:
      ax3.plot(x[at], grad[at], lw=0.8, ls=":", color=f"C{i}", alpha=0.8,
               label=f"grad norm, {stage}" if stage else "grad norm")
  finite = y[np.isfinite(y) & (y > 0)]
  if finite.size and finite.max() / max(finite.min(), 1e-12) > 100:
    ax1.set_yscale("log")
  ax1.set_ylabel("loss")
  ax1.set_title(title or "training loss")
  ax1.grid(alpha=0.3)
  _extra_axis(ax1, x, extra or {})
  if any(names):
    ax1.legend(title="stage", fontsize=8, loc="upper left")
  ax2.set_ylabel("lr")
  ax2.set_xlabel("step" if len(set(names)) < 2 else "step (stages one after another)")
  _integer_ticks(ax2.xaxis)
  if ax3 is not None:
    ax3.set_ylabel("grad norm (dotted)", color="gray")
    handles = ax2.get_lines() + ax3.get_lines()
    ax3.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper right")
  return fig


def _extra_axis(ax, x: np.ndarray, extra: dict[str, Sequence[float]]) -> None:
  """Extra logged columns as labelled points (only where logged) on a right-hand axis."""
  series = {k: np.asarray(v, np.float64) for k, v in extra.items() if len(v) == len(x)}
  series = {k: v for k, v in series.items() if np.any(np.isfinite(v))}
  if not series:
    return
  right = ax.twinx()
  for i, (name, v) in enumerate(series.items()):
    at = np.isfinite(v)
    right.plot(x[at], v[at], "o-", ms=3, lw=0.8, color=f"C{9 - i % 10}", label=name)
  right.set_ylabel(", ".join(series))
  right.legend(fontsize=8, loc="upper right")


def render_loss(steps: Sequence[float], loss: Sequence[float], lr: Sequence[float],
                grad_norm: Sequence[float], path: str | os.PathLike, title: str = "",
                stages: Sequence[str] | None = None,
                extra: dict[str, Sequence[float]] | None = None) -> Path:
  """The loss plot (`loss_figure`) as a PNG."""
  return _save(loss_figure(steps, loss, lr, grad_norm, title, stages, extra), path)


def _integer_ticks(axis) -> None:
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  axis.set_major_locator(MaxNLocator(integer=True))


def render_roc(labels: Sequence[bool], scores: Sequence[float], path: str | os.PathLike,
               title: str = "") -> Path | None:
  c = roc_curve(labels, scores)
  if c is None:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.plot(c.x, c.y, lw=1.5, label=f"AUC = {metrics.roc_auc(labels, scores):.4f}")
  ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
  ax.set(xlabel="false positive rate", ylabel="true positive rate (recall)",
         title=title or "ROC (yes = positive)", xlim=(0, 1), ylim=(0, 1.02))
  ax.legend(loc="lower right")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def render_pr(labels: Sequence[bool], scores: Sequence[float], path: str | os.PathLike,
              title: str = "") -> Path | None:
  """Step-wise, as average precision sums it: precision P_n holds on (R_n-1, R_n]."""
  c = pr_curve(labels, scores)
  if c is None:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ap = metrics.average_precision(labels, scores)
  ax.step(c.x, c.y, where="pre", lw=1.5, label=f"AP = {ap:.4f}")
  base = float(np.mean(np.asarray(labels, bool)))
  ax.axhline(base, ls="--", color="gray", lw=0.8, label=f"share of yes = {base:.2f}")
  ax.set(xlabel="recall", ylabel="precision", title=title or "precision-recall (yes = positive)",
         xlim=(0, 1), ylim=(0, 1.02))
  ax.legend(loc="lower left")
  ax.grid(alpha=0.3)
  return _save(fig, path)


def render_confusion(tp: int, tn: int, fp: int, fn: int, path: str | os.PathLike,
                     title: str = "confusion matrix") -> Path:
  plt = _pyplot()
  m = np.array([[tp, fn], [fp, tn]])
  fig, ax = plt.subplots(figsize=(4, 3.6))
  ax.imshow(m, cmap="Blues")
  names = [["Tp", "Fn"], ["Fp", "Tn"]]
  for i in range(2):
    for j in range(2):
      dark = m[i, j] > m.max() / 2
      ax.text(j, i, f"{names[i][j]}\n{m[i, j]}", ha="center", va="center",
              color="white" if dark else "black", fontsize=12)
  ax.set_xticks([0, 1], ["pred yes", "pred no"])
  ax.set_yticks([0, 1], ["label yes", "label no"])
  ax.set_title(title)
  return _save(fig, path)


def render_histogram(labels: Sequence[bool], scores: Sequence[float], path: str | os.PathLike,
                     threshold: float, title: str = "") -> Path:
  """p(yes) by true class: the two classes side by side in each bin (no overlap hides one),
  integer counts, the threshold marked."""
  plt = _pyplot()
  y = np.asarray(labels, bool)
  s = np.asarray(scores, np.float64)
  fig, ax = plt.subplots(figsize=(6.5, 3.6))
  bins = np.linspace(0, 1, 11 if len(s) < 200 else 21)
  ax.hist([s[y], s[~y]], bins=bins, color=["tab:blue", "tab:red"], edgecolor="white",
          label=[f"label yes ({int(y.sum())})", f"label no ({int((~y).sum())})"])
  ax.axvline(threshold, ls="--", color="black", lw=0.8, label=f"threshold {threshold:g}")
  ax.set(xlabel="p(yes)", ylabel="examples", title=title or "p(yes) by true class", xlim=(0, 1))
  _integer_ticks(ax.yaxis)
  ax.legend(fontsize=8)
  return _save(fig, path)


def render_history(numbers: Sequence[int], values: Sequence[float | None],
                   states: Sequence[str], path: str | os.PathLike, metric: str = "score") -> Path:
  """Study history: each trial's score (failed/pruned marked), best so far as a line."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  best, best_x, best_y = -np.inf, [], []
  for n, v, s in zip(numbers, values, states):
    if s == "COMPLETE" and v is not None:
      best = max(best, v)
    if np.isfinite(best):
      best_x.append(n)
      best_y.append(best)
  done = [(n, v) for n, v, s in zip(numbers, values, states) if s == "COMPLETE" and v is not None]
  pruned = [(n, v) for n, v, s in zip(numbers, values, states) if s == "PRUNED" and v is not None]
  failed = [n for n, s in zip(numbers, states) if s == "FAIL"]
  if done:
    ax.plot(*zip(*done), "o", color="tab:blue", label="trial")
  if pruned:
    ax.plot(*zip(*pruned), "v", color="tab:gray", label="pruned (last fold)")
  if failed:
    ax.plot(failed, [min(v for _, v in done) if done else 0] * len(failed), "x",
            color="tab:red", label="failed")
  if best_x:
    ax.step(best_x, best_y, where="post", color="tab:orange", label="best so far")
  ax.set(xlabel="trial", ylabel=metric, title=f"study history: {metric}")
  _integer_ticks(ax.xaxis)
  ax.grid(alpha=0.3)
  if done or pruned or failed:
    ax.legend()
  return _save(fig, path)
