"""palijudge.experiments.cv: the CV score and summary over folds, and `03-do_learn.py --cv`
on the tiny model (a score, a record per fold), checked against scikit-learn."""

from __future__ import annotations

import json
import math

import pytest
from sklearn import metrics as skm
from testing import run_script

from palijudge.data import examples, splits
from palijudge.errors import UserError
from palijudge.experiments import cv


def test_cv_score_and_summary():
  assert cv.cv_score([0.5, 0.7, 0.9]) == (pytest.approx(0.7), pytest.approx(math.sqrt(0.08 / 3)))
  with pytest.raises(UserError):
    cv.cv_score([0.5, float("nan")])
  folds = [{"f_measure": 0.8, "auc": 0.9, "precision": 1.0}, {"f_measure": 0.6, "auc": 0.7}]
  s = cv.summarize(folds, "f_measure")
  assert (s.score, s.std, s.folds) == (pytest.approx(0.7), pytest.approx(0.1), [0.8, 0.6])
  assert set(s.means) == {"f_measure", "auc"} and "CV f_measure (2 folds): 0.7000" in s.format()
  with pytest.raises(UserError, match="missing or not finite in fold"):
    cv.summarize([{"auc": 0.5}], "f_measure")


def _jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.script
def test_cross_validation_reports_a_cv_score_and_records_each_fold(tmp_project):
  proj = tmp_project.root
  rows = examples.read_jsonl(tmp_project.dataset / "data.jsonl")
  pairs = splits.write_folds(rows, 2, seed=0, stratify=True, out_dir=tmp_project.dataset / "cv2")
  # The threshold is picked on each fold's valid set, so precision and F are not degenerate.
  out = run_script("03-do_learn.py", "--cv", "cv2", "--model", "tiny", "--steps", "2",
                   "--cv-metric", "accuracy", "--pick-threshold", "valid",
                   "--experiments", "exp-cv", project=tmp_project).stdout
  assert "CV accuracy (2 folds): " in out
  rec = proj / "exp-cv" / "cv2"
  summary = json.loads((rec / "eval_metrics.json").read_text())["cv"]
  assert summary["metric"] == "accuracy" and len(summary["folds"]) == 2
  assert summary["score"] == pytest.approx(sum(summary["folds"]) / 2)
  assert f"{summary['score']:.4f}" in out
  for i, (_, valid) in enumerate(pairs):
    fold = rec / f"fold-{i + 1}"
    assert (fold / "train_log.csv").read_text().count("\n") >= 3
    assert (fold / "loss.png").is_file()
    # Independently: the labels of the fold's valid file, the fold's predicted answers,
    # scikit-learn's metrics; then the fold's recorded metrics and its CV value.
    truth = {e["image"]: e["suffix"] == "yes" for e in _jsonl(valid)}
    preds = _jsonl(fold / "predictions.jsonl")
    assert sorted(r["image"] for r in preds) == sorted(truth)
    y = [truth[r["image"]] for r in preds]
    yhat = [r["pred"] == "yes" for r in preds]
    assert any(yhat) and any(y)
    recorded = json.loads((fold / "eval_metrics.json").read_text())["after training"]
    mine = recorded["valid.jsonl"]
    assert mine["precision"] == pytest.approx(skm.precision_score(y, yhat, zero_division=0))
    assert mine["f_measure"] == pytest.approx(skm.f1_score(y, yhat, zero_division=0))
    assert summary["folds"][i] == pytest.approx(skm.accuracy_score(y, yhat))
  out_of_fold = _jsonl(rec / "predictions.jsonl")
  assert sorted(r["image"] for r in out_of_fold) == sorted(e.raw_image for e in rows)
