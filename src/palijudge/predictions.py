"""Prediction files: one row per example with its label, p(yes) and prediction.

The one per-example schema: written by `13-inference.py`, `04-validate.py
--scores` and run records (predictions.jsonl), read by `14-validate_outtsv.py`
(aggregation) and `16-filter_train_data.py` (outcome filters, below).

TSV: a header line, then `id image label p_yes pred prefix [answer]`, tab
separated. JSONL: one object per line with the same keys. `id` is the row's
id column / key in the dataset, else its line number; `image` the path as
written in the dataset (so a filtered file resolves against the same root);
`label` and `pred` are yes/no; `p_yes` is written exactly (`repr` of the
float: every float32 score reads back as the same number, so a metric recomputed
from the file equals the one printed; files with fewer digits still read);
`answer` (decode mode) the generated text. Readers need `label` and `pred` (or `p_yes` and a
threshold); other columns are optional, unknown ones ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import numpy as np

from palijudge import files
from palijudge.evaluation import stats
from palijudge.data import examples as tsv
from palijudge.data.examples import Example, normalize_label
from palijudge.errors import UserError, where
from palijudge.metrics import Confusion, ScoreMetrics, format_block, format_scores

COLUMNS = ("id", "image", "label", "p_yes", "pred", "prefix")
FORMATS = ("tsv", "jsonl")


@dataclasses.dataclass(frozen=True)
class PredRow:
  id: str
  image: str
  label: bool
  p_yes: float | None
  pred: bool
  prefix: str = ""
  answer: str = ""
  source: str = ""
  line: int = 0


def format_of(path: str | None, default: str = "tsv") -> str:
  """tsv or jsonl from the file suffix (stdout: `default`)."""
  if path is None:
    return default
  ext = os.path.splitext(path)[1].lower().lstrip(".")
  if ext not in FORMATS:
    raise UserError(f"{path}: unknown prediction file format {ext or '(no suffix)'!r}; "
                    f"expected .tsv or .jsonl")
  return ext


def rows_of(result) -> list[PredRow]:
  """The rows of an `scoring.EvalResult`."""
  return rows_from(result.examples, result.p_yes, result.pred, result.answers)


def records_of(result) -> list[dict]:
  """The rows of an EvalResult as JSON objects (a run record's predictions.jsonl)."""
  return [json.loads(format_row(r, "jsonl", result.mode == "decode")) for r in rows_of(result)]


def rows_from(examples: Sequence[Example], p_yes: np.ndarray, pred: np.ndarray,
              answers: Sequence[str]) -> list[PredRow]:
  return [PredRow(e.key, e.raw_image, e.label, float(p), bool(y), e.prefix, a, e.source, e.line)
          for e, p, y, a in zip(examples, p_yes, pred, answers)]


def check_values(examples: Sequence[Example], fmt: str) -> None:
  """Refuses, before any work, an example whose row a TSV file could not hold: a tab or a
  line break in its id, image or prefix (named by data file and line)."""
  if fmt != "tsv":
    return
  for e in examples:
    for what, value in (("id", e.key), ("image", e.raw_image), ("prefix", e.prefix)):
      if "\t" in value or "\n" in value or "\r" in value:
        raise UserError(f"{where(e.source, e.line)}: its {what} {value[:40]!r} holds a tab or "
                        f"a line break, which a TSV prediction file cannot hold; write JSONL "
                        f"instead (.jsonl, or --format jsonl)")


def header(fmt: str, with_answer: bool = False) -> list[str]:
  """The header line(s) of a file (none for JSONL)."""
  cols = COLUMNS + (("answer",) if with_answer else ())
  return [tsv.format_line(cols)] if fmt == "tsv" else []


def format_row(row: PredRow, fmt: str, with_answer: bool = False) -> str:
  yn = lambda b: "yes" if b else "no"
  p = "" if row.p_yes is None else repr(float(row.p_yes))  # Exact: no ties made by rounding.
  values = [row.id, row.image, yn(row.label), p, yn(row.pred), row.prefix]
  if fmt == "tsv":  # A generated answer's tabs and line breaks become spaces.
    answer = row.answer.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return tsv.format_line(values + ([answer] if with_answer else []))
  obj = dict(zip(COLUMNS, values))
  obj["p_yes"] = None if row.p_yes is None else float(row.p_yes)
  if with_answer:
    obj["answer"] = row.answer
  return json.dumps(obj, ensure_ascii=False) + "\n"


def write(path: str, rows: Sequence[PredRow], with_answer: bool = False) -> None:
  """A whole prediction file, atomically (format by suffix)."""
  fmt = format_of(path)
  files.write_text(path, header(fmt, with_answer)
                   + [format_row(r, fmt, with_answer) for r in rows])


def _records(path: str) -> tuple[list[str], list[tuple[int, dict]]]:
  """(columns, (line, record)) of a TSV or JSONL file: a prediction file, or a dataset (a TSV
  without a header is the original raw data, `image label [prefix]`)."""
  if tsv.format_of(path, "prediction file", sniff=True) == "tsv":
    table = tsv.read_table(path, ("label", "pred", "p_yes", "image"), positional=tsv.TSV_COLUMNS)
    return table.columns, table.rows
  recs = []
  for line, text in tsv.read_lines(path):
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{where(path, line)}: invalid JSON: {e.msg}") from None
    if not isinstance(obj, dict):
      raise UserError(f"{where(path, line)}: expected a JSON object")
    recs.append((line, obj))
  cols = list(dict.fromkeys(k for _, r in recs for k in r))
  return cols, recs


def _p_yes(value, path: str, line: int) -> float | None:
  if value is None or value == "":
    return None
  try:
    p = float(value)
  except (TypeError, ValueError):
    p = math.nan
  if not 0.0 <= p <= 1.0:
    raise UserError(f"{where(path, line)}: p_yes must be a number in [0, 1], got {value!r}")
  return p


def read(path: str | os.PathLike, threshold: float | None = None) -> list[PredRow]:
  """Reads a prediction file; with `threshold`, pred is recomputed as p_yes >= threshold."""
  path = os.fspath(path)
  return _rows(path, *_records(path), threshold)


def _rows(path: str, cols: list[str], recs: list[tuple[int, dict]], threshold: float | None
          ) -> list[PredRow]:
  need = ("label", "p_yes") if threshold is not None else ("label", "pred")
  missing = [c for c in need if c not in cols]
  if missing and "image" in cols and ({"label", "suffix"} & set(cols)):
    raise UserError(f"{path}: a dataset, not predictions (no {' or '.join(missing)} column): "
                    f"make predictions first, e.g. `playground/13-inference.py -l CKPT -d "
                    f"{path} -o out.tsv`, then pass out.tsv")
  if missing or not recs:
    what = f"missing column(s) {', '.join(missing)}" if missing else "no rows"
    raise UserError(f"{path}: {what} (a prediction file has {', '.join(COLUMNS)})")
  out = []
  for line, r in recs:
    label = normalize_label(str(r.get("label", "")), path, line)
    p = _p_yes(r.get("p_yes"), path, line)
    if threshold is not None:
      if p is None:
        raise UserError(f"{where(path, line)}: no p_yes to apply --threshold to")
      pred = p >= threshold
    else:
      pred = normalize_label(str(r.get("pred", "")), path, line, "pred")
    out.append(PredRow(str(r.get("id", line)), str(r.get("image", "")), label, p, pred,
                       str(r.get("prefix", "") or ""), str(r.get("answer", "") or ""),
                       path, line))
  return out


# --- The data a prediction file came from -----------------------------------------
# The original 14-validate_outtsv.py took the raw data file beside the predictions made from
# it (`14-validate_outtsv.py out.tsv data.tsv`). Given here, such a file is not aggregated (it
# holds no predictions): it is checked against every prediction file that came from it (a
# row with the same id, or line number, and image), whose labels must agree, and one line
# says how many of its rows each one judged (a run killed half-way judged fewer).


@dataclasses.dataclass(frozen=True)
class DataFile:
  """A dataset given among prediction files: {key (id, else line): (image, label, line)}."""
  path: str
  rows: dict[str, tuple[str, bool, int]]

  def judged(self, preds: Sequence[PredRow]) -> int:
    """How many of this data's rows `preds` judged; a row that names one of them (its key and
    image) with another label is refused: the predictions are not of this data."""
    seen = set()
    for r in preds:
      mine = self.rows.get(r.id)
      if mine is None or mine[0] != r.image:
        continue
      if mine[1] != r.label:
        raise UserError(f"{where(r.source, r.line)}: label {'yes' if r.label else 'no'} for "
                        f"{r.image}, but {where(self.path, mine[2])} says "
                        f"{'yes' if mine[1] else 'no'}: the predictions are of other data")
      seen.add(r.id)
    return len(seen)

  def summary(self, per_file: dict[str, Sequence[PredRow]]) -> str:
    """`Data: FILE  N rows (Y yes, N no); out.tsv judged all of them`, one line."""
    done = {name: self.judged(rows) for name, rows in per_file.items()}
    parts = [f"{name} judged {'all' if n == len(self.rows) else n} of them"
             for name, n in done.items() if n]
    if not parts:
      raise UserError(f"{self.path}: no prediction file given comes from this data (none has a "
                      f"row with one of its ids, or line numbers, and images)")
    yes = sum(label for _, label, _ in self.rows.values())
    return (f"Data: {self.path}  {len(self.rows)} rows ({yes} yes, {len(self.rows) - yes} no); "
            f"{'; '.join(parts)}, the labels agree")


def read_any(path: str | os.PathLike, threshold: float | None = None
             ) -> list[PredRow] | DataFile:
  """A prediction file's rows, or a DataFile for a dataset (image and label, no pred or
  p_yes: a headerless TSV, or a data .jsonl / .tsv)."""
  path = os.fspath(path)
  cols, recs = _records(path)
  labels = [c for c in ("label", "suffix") if c in cols]
  if {"pred", "p_yes"} & set(cols) or "image" not in cols or not labels or not recs:
    return _rows(path, cols, recs, threshold)
  out = {}
  for line, r in recs:
    key = str(line) if r.get("id") in (None, "") else str(r["id"])  # As Example.key.
    out[key] = (str(r.get("image", "")), normalize_label(str(r.get(labels[0], "")), path, line),
                line)
  return DataFile(path, out)


def aggregate(rows: Sequence[PredRow]) -> tuple[Confusion, ScoreMetrics | None]:
  """Confusion counts, and score metrics when every row has p_yes."""
  conf = Confusion.from_labels([r.label for r in rows], [r.pred for r in rows])
  if any(r.p_yes is None for r in rows):
    return conf, None
  return conf, ScoreMetrics.compute([r.label for r in rows], [r.p_yes for r in rows])


def intervals(rows: Sequence[PredRow]) -> stats.Intervals:
  """95 % intervals of accuracy, precision, recall, and ROC-AUC when every row has p_yes."""
  p = None if any(r.p_yes is None for r in rows) else [r.p_yes for r in rows]
  return stats.Intervals.of([r.label for r in rows], [r.pred for r in rows], p)


def format_rows(rows: Sequence[PredRow], name: str, heading: str = "Aggregate",
                threshold: float | None = None) -> str:
  """The Result block of prediction rows: the six fixed lines, the scores when every row
  has p_yes (with `threshold` when one re-judged them), then the interval line."""
  conf, scores = aggregate(rows)
  parts = [format_block(conf, name, heading)]
  if scores is not None:
    parts.append(format_scores(scores, threshold))
  return "\n".join(parts + [intervals(rows).line()])


# --- Outcome filters: the next training set from a prediction file --------------
# Each row has an outcome: TP (yes judged yes), TN, FP (no judged yes) or FN
# (yes judged no). `--keep` chooses which outcomes stay:
#   fp       false positives only           fn      false negatives only
#   errors   FP + FN (alias fp+fn)          not-tp  everything except TP
#   tn+fp    every `no` example (the negatives, judged either way)
# Then, optionally, `balance` keeps as many `yes` as `no` labels (the smaller
# count of the two) and `max_rows` caps the total; both draw a seeded random
# sample and keep the rows in file order.

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
  """The kept rows as a training dataset: TSV without a header (`image label [prefix]`, the
  original raw data's form, so `| head -64` keeps 64 rows), or JSONL (with the id)."""
  if fmt == "tsv":
    return [tsv.raw_tsv_line(r.image, "yes" if r.label else "no", r.prefix) for r in rows]
  return [json.dumps({"id": r.id, "prefix": r.prefix, "suffix": "yes" if r.label else "no",
                      "image": r.image}, ensure_ascii=False) + "\n" for r in rows]
