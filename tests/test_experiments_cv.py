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
from palijudge.experiments import cv, tune


def test_cv_score_and_summary():
  assert cv.cv_score([0.5, 0.7, 0.9]) == (pytest.approx(0.7), pytest.approx(math.sqrt(0.08 / 2)))
  assert cv.cv_score([0.5]) == (0.5, 0.0)
  with pytest.raises(UserError):
    cv.cv_score([0.5, float("nan")])
  folds = [{"f_measure": 0.8, "auc": 0.9, "precision": 1.0}, {"f_measure": 0.6, "auc": 0.7}]
  s = cv.summarize(folds, "f_measure")
  assert (s.score, s.std, s.folds) == (pytest.approx(0.7), pytest.approx(math.sqrt(0.02)),
                                       [0.8, 0.6])
  assert set(s.means) == {"f_measure", "auc"} and "CV f_measure (2 folds): 0.7000" in s.format()
  with pytest.raises(UserError, match="missing or not finite in fold"):
    cv.summarize([{"auc": 0.5}], "f_measure")


def test_a_constant_answer_is_flagged_in_the_summary_and_the_trial(monkeypatch):
  from palijudge.metrics import Confusion
  yes_85 = [Confusion(tp=17, tn=0, fp=3, fn=0).to_dict()] * 2  # 85 % yes, always yes
  s = cv.summarize(yes_85)
  assert s.score == pytest.approx(0.92, abs=0.005) and s.one_class == "yes"
  assert "  warning: every prediction was 'yes', a constant answer" in s.format()
  assert cv.summarize([Confusion(0, 3, 0, 17).to_dict()], "accuracy").one_class == "no"
  one_no = [yes_85[0], Confusion(tp=16, tn=1, fp=3, fn=0).to_dict()]
  assert cv.summarize(one_no).one_class is None and "warning" not in cv.summarize(one_no).format()
  warned = []
  report = type("Report", (), {"metric": "f_measure", "record": None, "warn": warned.append})()
  loads = []
  monkeypatch.setattr(cv.loader, "resolve", lambda *a, **k: None)
  monkeypatch.setattr(cv.loader, "load", lambda *a, **k: loads.append(k))
  monkeypatch.setattr(cv.splits, "fold_paths", lambda folder: [])
  monkeypatch.setattr(cv, "cv_learn", lambda *a, **k: s)
  score = cv.cv_objective(dict(tune.DEFAULTS), "cv2", report, model="tiny", root="dataset",
                          quantize="nf4")
  assert score == s.score and warned == [s.warning()]
  assert loads == [{"trainable": "attn", "quantize": "nf4"}]  # The trial's weights as asked.


def test_cv_spread_over_folds_has_min_max_and_a_t_interval():
  import numpy as np
  import scipy.stats
  values = [0.6, 0.8, 0.7, 0.9, 0.75]
  s = cv.summarize([{"accuracy": v} for v in values], "accuracy")
  lo, hi = scipy.stats.t.interval(0.95, 4, loc=np.mean(values), scale=scipy.stats.sem(values))
  assert (s.fold_min, s.fold_max) == (0.6, 0.9) and s.interval == pytest.approx((lo, hi))
  # The std printed beside the t interval is the one it is built from: sem = std / sqrt(n).
  assert s.std == pytest.approx(np.std(values, ddof=1))
  assert s.std / math.sqrt(len(values)) == pytest.approx(scipy.stats.sem(values))
  assert s.stds["accuracy"] == s.std and f"0.7500 +- {s.std:.4f}" in s.format()
  assert (f"  spread: min 0.6000  max 0.9000  95% t-interval of the mean [{lo:.4f}, {hi:.4f}]"
          in s.format().splitlines())
  d = json.loads(json.dumps(s.to_dict()))
  assert d["interval"] == pytest.approx([lo, hi]) and d["fold_min"] == 0.6
  assert cv.summarize([{"accuracy": 0.5}], "accuracy").interval is None


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
  assert f"{summary['score']:.4f}" in out and "  spread: min " in out
  assert "  spread: min " in (rec / "summary.md").read_text()
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
    recorded = json.loads((fold / "eval_metrics.json").read_text())["1st trained"]
    mine = recorded["valid.jsonl"]
    assert mine["precision"] == pytest.approx(skm.precision_score(y, yhat, zero_division=0))
    assert mine["f_measure"] == pytest.approx(skm.f1_score(y, yhat, zero_division=0))
    assert summary["folds"][i] == pytest.approx(skm.accuracy_score(y, yhat))
  out_of_fold = _jsonl(rec / "predictions.jsonl")
  assert sorted(r["image"] for r in out_of_fold) == sorted(e.raw_image for e in rows)
