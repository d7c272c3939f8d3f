"""Cross-validation: K fold splits on disk, and the CV score over the folds.

`write_folds` writes OUT/fold-1/{train,valid}.jsonl ... OUT/fold-K/ and
OUT/folds.json (k, seed, stratify, counts). Every example is in exactly one
valid file; the folds are fixed by the seed (numpy default_rng). With
`stratify`, each fold's valid set holds each class as evenly as whole numbers
allow. `fold_paths` reads them back (for `03-do_learn.py --cv NAME`).

The CV score is the mean of one metric over the folds; its spread is the
population standard deviation (ddof=0, as `numpy.std`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from palijudge.records import finite
from palijudge import data
from palijudge.data import Example
from palijudge.errors import UserError, where

METRICS = ("accuracy", "precision", "recall", "f_measure", "auc")
MANIFEST = "folds.json"


def fold_name(i: int) -> str:
  """Folder of fold i (1-based): fold-1, fold-2, ..."""
  return f"fold-{i}"


def assign_folds(labels: Sequence[bool], k: int, seed: int, stratify: bool) -> np.ndarray:
  """fold index (0..k-1) of each example; sizes differ by at most one.

  Without stratify: a seeded permutation dealt round-robin. With stratify:
  the shuffled yes examples then the shuffled no examples, dealt round-robin,
  so each class is spread over the folds as evenly as possible too.
  """
  n = len(labels)
  order = np.random.default_rng(seed).permutation(n)
  if stratify:
    y = np.asarray(labels, bool)[order]
    order = np.concatenate([order[y], order[~y]])
  folds = np.empty(n, np.int64)
  folds[order] = np.arange(n) % k
  return folds


def write_folds(examples: Sequence[Example], k: int, seed: int, stratify: bool,
                out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
  """Writes K (train, valid) JSONL pairs under out_dir; returns their paths."""
  n = len(examples)
  name = examples[0].source if examples else os.fspath(out_dir)
  if k < 2:
    raise UserError(f"{name}: --folds {k} must be at least 2")
  if k > n:
    raise UserError(f"{name}: --folds {k} is more than the {n} examples")
  folds = assign_folds([e.label for e in examples], k, seed, stratify)
  out = Path(out_dir)
  pairs, counts = [], []
  for i in range(k):
    train = [e for e, f in zip(examples, folds) if f != i]
    valid = [e for e, f in zip(examples, folds) if f == i]
    tr, va = out / fold_name(i + 1) / "train.jsonl", out / fold_name(i + 1) / "valid.jsonl"
    data.write_jsonl(tr, train)
    data.write_jsonl(va, valid)
    pairs.append((tr, va))
    counts.append({"train": data.class_counts(train), "valid": data.class_counts(valid)})
  manifest = {"k": k, "seed": seed, "stratify": stratify, "examples": n, "folds": counts}
  _write_json(out / MANIFEST, manifest)
  return pairs


def _write_json(path: Path, obj: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def fold_paths(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
  """The (train, valid) pairs that `write_folds` wrote under `folder`."""
  folder = Path(folder)
  manifest = folder / MANIFEST
  if not manifest.is_file():
    raise UserError(f"{where(manifest)}: no fold splits here; make them with "
                    f"`02-shuffle_data.py --folds K -n {folder.name}`")
  try:
    k = int(json.loads(manifest.read_text(encoding="utf-8"))["k"])
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"{where(manifest)}: unreadable fold manifest ({e})") from None
  pairs = [(folder / fold_name(i) / "train.jsonl", folder / fold_name(i) / "valid.jsonl")
           for i in range(1, k + 1)]
  for pair in pairs:
    for p in pair:
      if not p.is_file():
        raise UserError(f"{where(p)}: fold file missing (listed in {manifest})")
  return pairs


def cv_score(values: Sequence[float]) -> tuple[float, float]:
  """(mean, population std) of per-fold values; UserError when empty or non-finite."""
  v = np.asarray([float(x) for x in values], np.float64)
  if v.size == 0:
    raise UserError("CV score of no folds")
  if not np.all(np.isfinite(v)):
    raise UserError(f"CV score: non-finite fold value in {v.tolist()}")
  return float(v.mean()), float(v.std())


@dataclasses.dataclass(frozen=True)
class CVSummary:
  """The CV result of one run: `metric` over the folds, and every metric's mean/std."""
  metric: str
  score: float
  std: float
  folds: list[float]
  means: dict[str, float]
  stds: dict[str, float]

  def to_dict(self) -> dict[str, Any]:
    """The `cv` block of eval_metrics.json (what the report reads)."""
    return dataclasses.asdict(self)

  def format(self) -> str:
    """`CV f_measure (5 folds): 0.8123 +- 0.0456` and one line of fold values."""
    folds = "  ".join(f"fold {i}: {v:.4f}" for i, v in enumerate(self.folds, 1))
    lines = [f"CV {self.metric} ({len(self.folds)} folds): {self.score:.4f} +- {self.std:.4f}",
             f"  {folds}"]
    for m in METRICS:
      if m in self.means:
        lines.append(f"  {m + ':':11s}{self.means[m]:.4f} +- {self.stds[m]:.4f}")
    return "\n".join(lines)


def summarize(fold_metrics: Sequence[dict[str, Any]], metric: str = "f_measure") -> CVSummary:
  """CVSummary from one metrics dict per fold (Confusion.to_dict(), plus auc...)."""
  if metric not in METRICS:
    raise UserError(f"CV metric must be one of {', '.join(METRICS)}, got {metric!r}")
  if not fold_metrics:
    raise UserError("CV summary of no folds")
  missing = [i + 1 for i, m in enumerate(fold_metrics) if finite(m.get(metric)) is None]
  if missing:
    raise UserError(f"CV metric {metric} missing or not finite in fold(s) {missing}")
  values = [float(m[metric]) for m in fold_metrics]
  score, std = cv_score(values)
  means, stds = {}, {}
  for name in METRICS:
    vals = [finite(m.get(name)) for m in fold_metrics]
    if all(v is not None for v in vals):
      means[name], stds[name] = cv_score(vals)
  return CVSummary(metric, score, std, values, means, stds)

