"""palijudge.predictions: the one prediction-row schema (TSV/JSONL), its readers' errors,
the outcome filters, and every writer (04 --scores, 13, run records) sharing it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from testing import run_script

from palijudge import predictions
from palijudge.errors import UserError


def test_prediction_file_round_trip_and_missing_columns(tmp_path):
  rows = [predictions.PredRow("a", "img/0.png", True, 0.25, False, "p"),
          predictions.PredRow("b", "img/1.png", False, 0.75, True)]
  for ext in ("tsv", "jsonl"):
    path = tmp_path / f"p.{ext}"
    predictions.write(str(path), rows)
    back = predictions.read(path)
    assert [(r.id, r.image, r.label, r.p_yes, r.pred, r.prefix) for r in back] == [
        (r.id, r.image, r.label, r.p_yes, r.pred, r.prefix) for r in rows]
    assert [r.pred for r in predictions.read(path, threshold=0.2)] == [True, True]
    piece = tmp_path / f"xaa-{ext}"  # What Unix `split` makes of it: no suffix.
    piece.write_bytes(path.read_bytes())
    assert [dataclasses.replace(r, source="") for r in predictions.read(piece)] == [
        dataclasses.replace(r, source="") for r in back]
  bad = tmp_path / "bad.tsv"
  bad.write_text("image\tlabel\np.png\tyes\n")
  with pytest.raises(UserError, match=r"bad\.tsv: a dataset, not predictions \(no pred column\)"):
    predictions.read(bad)
  bad.write_text("id\tlabel\np\tyes\n")
  with pytest.raises(UserError, match=r"bad\.tsv: missing column\(s\) pred"):
    predictions.read(bad)
  bad.write_text("label\tpred\tp_yes\nyes\tyes\t1.5\n")
  with pytest.raises(UserError, match=r"bad\.tsv:2: p_yes must be a number in \[0, 1\]"):
    predictions.read(bad)


def test_the_data_beside_its_predictions_is_checked_not_aggregated(tmp_path):
  """14's original form (`out.tsv data.tsv`): the raw data file, headerless, is the data the
  predictions came from: matched by line number (or id) and image, labels must agree."""
  data = tmp_path / "data.tsv"
  data.write_text("img/0.png\tyes\nimg/1.png\tno\tp\nimg/2.png\tyes\n")
  read = predictions.read_any(data)
  assert isinstance(read, predictions.DataFile)
  assert read.rows == {"1": ("img/0.png", True, 1), "2": ("img/1.png", False, 2),
                       "3": ("img/2.png", True, 3)}
  rows = [predictions.PredRow(str(i), f"img/{i - 1}.png", lab, 0.5, True, source="out.tsv",
                              line=i + 1) for i, lab in ((1, True), (2, False), (3, True))]
  predictions.write(str(tmp_path / "out.tsv"), rows)
  out = predictions.read_any(tmp_path / "out.tsv")
  assert not isinstance(out, predictions.DataFile) and read.judged(out) == 3
  assert read.summary({"out.tsv": out}) == (
      f"Data: {data}  3 rows (2 yes, 1 no); out.tsv judged all of them, the labels agree")
  assert read.summary({"half.tsv": out[:2], "out.tsv": out}).startswith(
      f"Data: {data}  3 rows (2 yes, 1 no); half.tsv judged 2 of them; out.tsv judged all")
  other = [dataclasses.replace(r, image=f"other/{r.image}") for r in out]  # Another file's rows.
  assert read.judged(other) == 0
  with pytest.raises(UserError, match="no prediction file given comes from this data"):
    read.summary({"other.tsv": other})
  flipped = [dataclasses.replace(out[1], label=True)]
  with pytest.raises(UserError, match=r"out\.tsv:3: label yes for img/1\.png, but .*data\.tsv:2 "
                                      r"says no"):
    read.judged(flipped)
  jsonl = tmp_path / "data.jsonl"  # A .jsonl dataset with ids is data too.
  jsonl.write_text('{"id": "a", "image": "img/0.png", "suffix": "yes"}\n')
  assert predictions.read_any(jsonl).rows == {"a": ("img/0.png", True, 1)}


def test_p_yes_is_stored_exactly_so_file_metrics_equal_the_printed_ones(tmp_path):
  """Scores closer than 1e-6 (a confident model's float32 p(yes)) must not become ties."""
  import numpy as np
  from palijudge import metrics
  rng = np.random.default_rng(0)
  p = (np.float32(0.999) + rng.integers(0, 400, 200).astype(np.float32) * np.float32(6e-8))
  p = np.concatenate([p, rng.random(40).astype(np.float32)]).astype(np.float32)
  labels = rng.random(len(p)) < 0.6
  rows = [predictions.PredRow(str(i), f"img/{i}.png", bool(y), float(q), bool(q >= 0.5))
          for i, (y, q) in enumerate(zip(labels, p))]
  printed = metrics.ScoreMetrics.compute(labels.tolist(), p.tolist())
  for ext in ("tsv", "jsonl"):
    path = tmp_path / f"p.{ext}"
    predictions.write(str(path), rows)
    back = predictions.read(path)
    _, recomputed = predictions.aggregate(back)
    assert recomputed.roc_auc == printed.roc_auc and recomputed.pr_auc == printed.pr_auc
    assert [r.p_yes for r in back] == [float(q) for q in p]  # Bit for bit.
    assert predictions.format_rows(back, "x") == predictions.format_rows(rows, "x")
  old = tmp_path / "old.tsv"  # A file written before: 6 decimals. It still reads.
  old.write_text("id\timage\tlabel\tp_yes\tpred\tprefix\n1\ta.png\tyes\t0.999000\tyes\t\n")
  assert [r.p_yes for r in predictions.read(old)] == [0.999]


def _row(i, label, pred):
  return predictions.PredRow(str(i), f"img/{i}.png", label, 0.5, pred)


def test_aggregate_block_ends_with_the_interval_line():
  from palijudge import metrics
  from palijudge.evaluation import stats
  rows = [_row(i, i < 6, i < 5 or i == 9) for i in range(10)]
  text = predictions.format_rows(rows, "out.tsv", threshold=0.5).splitlines()
  conf, _ = predictions.aggregate(rows)
  assert "\n".join(text[:6]) == metrics.format_block(conf, "out.tsv", heading="Aggregate")
  assert text[6] == "  threshold: 0.5" and len(text) == 12
  want = stats.Intervals.of([r.label for r in rows], [r.pred for r in rows], [0.5] * 10)
  assert text[-1] == want.line() and predictions.intervals(rows) == want
  no_p = [dataclasses.replace(r, p_yes=None) for r in rows]
  lines = predictions.format_rows(no_p, "out.tsv").splitlines()
  assert len(lines) == 7 and lines[-1].endswith("ROC-AUC n/a")


def test_outcome_filters():
  rows = ([_row(i, True, True) for i in range(4)] + [_row(i, False, False) for i in range(4, 7)]
          + [_row(i, False, True) for i in range(7, 9)] + [_row(i, True, False) for i in (9,)])
  ids = lambda keep, **kw: [r.id for r in predictions.select(rows, keep, **kw).rows]
  assert ids("fp") == ["7", "8"] and ids("fn") == ["9"]
  assert ids("errors") == ids("fp+fn") == ["7", "8", "9"]
  assert ids("not-tp") == [str(i) for i in range(4, 10)]
  assert ids("tn+fp") == [str(i) for i in range(4, 9)]
  assert set(predictions.KEEPS) == {"fp", "fn", "errors", "fp+fn", "not-tp", "tn+fp"}
  capped = ids("not-tp", max_rows=3, seed=1)
  assert len(capped) == 3 and capped == sorted(capped, key=int)
  bal = predictions.select(rows, "not-tp", balance=True).rows
  assert sum(r.label for r in bal) == 1 and len(bal) == 2
  assert len(predictions.select(rows, "tn+fp", max_rows=2).rows) == 2
  with pytest.raises(UserError, match="--balance needs both labels"):
    predictions.select(rows, "fp", balance=True)
  lines = predictions.dataset_lines(predictions.select(rows, "fn").rows, "tsv")
  assert lines == ["img/9.png\tyes\n"]  # No header: as the original raw data, `head -N` = N rows.


@pytest.mark.script
def test_scores_inference_rows_and_run_records_share_one_schema(tmp_project, tiny_examples):
  """04 --scores, 13's rows and a run record's predictions.jsonl: one schema, one reader."""
  valid = "dataset/set1/valid.jsonl"
  run_script("04-validate.py", "--model", "tiny", valid, "--scores", "scores.jsonl",
             project=tmp_project)
  run_script("13-inference.py", "--model", "tiny", "-d", valid, "-i", "dataset",
             "-o", "rows.jsonl", "--no-progress", project=tmp_project)
  run_script("03-do_learn.py", "-d", "set1", "--model", "tiny", "--steps", "1",
             "--experiments", "exp", project=tmp_project)
  root = tmp_project.root
  record = root / "exp" / "set1" / "predictions.jsonl"
  jsonl = [root / "scores.jsonl", root / "rows.jsonl", record]
  keys = [{k for line in p.read_text().splitlines() for k in json.loads(line)} for p in jsonl]
  assert keys[0] == keys[1] == keys[2] == set(predictions.COLUMNS)
  read = {p.name: predictions.read(p) for p in jsonl}
  want = [(e.key, e.raw_image, e.label) for e in tiny_examples[2]]
  for name, rows in read.items():
    assert [(r.id, r.image, r.label) for r in rows] == want, name
    assert all(0 <= r.p_yes <= 1 and r.pred == (r.p_yes >= 0.5) for r in rows), name
  p = lambda name: [r.p_yes for r in read[name]]
  assert p("scores.jsonl") == p("rows.jsonl")  # The same model and prompt.
