"""Outcome filters: the next training set from a prediction file.

Each prediction row has an outcome: TP (yes judged yes), TN, FP (no judged
yes) or FN (yes judged no). `--keep` chooses which outcomes stay:

  fp       false positives only           fn      false negatives only
  errors   FP + FN (alias fp+fn)          not-tp  everything except TP
  tn+fp    every `no` example (the negatives, judged either way)

Then, optionally, `balance` keeps as many `yes` as `no` labels (the smaller
count of the two) and `max_rows` caps the total; both draw a seeded random
sample and keep the rows in file order.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from palijudge import tsv
from palijudge.errors import UserError
from palijudge.predfile import PredRow

KEEPS = {"fp": {"fp"}, "fn": {"fn"}, "errors": {"fp", "fn"}, "fp+fn": {"fp", "fn"},
         "not-tp": {"tn", "fp", "fn"}, "tn+fp": {"tn", "fp"}}


def outcome(row: PredRow) -> str:
  """tp, tn, fp or fn."""
  return ("t" if row.label == row.pred else "f") + ("p" if row.pred else "n")


@dataclasses.dataclass(frozen=True)
class FilterResult:
  rows: list[PredRow]
  matched: int                # Rows with a kept outcome, before balancing and capping.
  counts: dict[str, int]      # Outcome counts over all input rows.


def _sample(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
  return idx if n >= len(idx) else np.sort(rng.choice(idx, n, replace=False))


def select(rows: Sequence[PredRow], keep: str, max_rows: int | None = None,
           balance: bool = False, seed: int = 0) -> FilterResult:
  if keep not in KEEPS:
    raise UserError(f"--keep must be one of {', '.join(KEEPS)}, got {keep!r}")
  if max_rows is not None and max_rows < 1:
    raise UserError(f"--max must be >= 1, got {max_rows}")
  outcomes = [outcome(r) for r in rows]
  counts = {k: outcomes.count(k) for k in ("tp", "tn", "fp", "fn")}
  idx = np.array([i for i, o in enumerate(outcomes) if o in KEEPS[keep]], np.int64)
  rng = np.random.default_rng(seed)
  if balance:
    labels = np.array([rows[i].label for i in idx], bool)
    yes, no = idx[labels], idx[~labels]
    per = min(len(yes), len(no), (max_rows // 2) if max_rows else len(idx))
    if per == 0:
      raise UserError(f"--balance needs both labels among the kept rows (--keep {keep}: "
                      f"{len(yes)} yes, {len(no)} no)")
    idx = np.sort(np.r_[_sample(yes, per, rng), _sample(no, per, rng)])
  if max_rows is not None:
    idx = _sample(idx, max_rows, rng)
  return FilterResult([rows[i] for i in idx], int(sum(o in KEEPS[keep] for o in outcomes)),
                      counts)


def dataset_lines(rows: Sequence[PredRow], fmt: str) -> list[str]:
  """The kept rows as a training dataset (`id image label prefix` TSV, or JSONL)."""
  import json
  if fmt == "tsv":
    return [tsv.format_line(("id", "image", "label", "prefix"))] + [
        tsv.format_line((r.id, r.image, "yes" if r.label else "no", r.prefix)) for r in rows]
  return [json.dumps({"id": r.id, "prefix": r.prefix, "suffix": "yes" if r.label else "no",
                      "image": r.image}, ensure_ascii=False) + "\n" for r in rows]
