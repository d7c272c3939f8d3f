"""Tests for palijudge.metrics: exact output formats and sklearn agreement."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from palijudge import metrics
from palijudge.metrics import Confusion, format_block, json_line


def test_format_block_exact():
  c = Confusion(tp=4, tn=4, fp=1, fn=1)
  want = ("Result: dataset/set1/valid.jsonl\n"
          "  Tp=4 Tn=4 Fp=1 Fn=1\n"
          "  accuracy:  0.8\n"
          "  precision: 0.8\n"
          "  recall:    0.8\n"
          "  F-measure: 0.8000000000000002")
  assert format_block(c, "dataset/set1/valid.jsonl") == want


def test_format_block_heading():
  text = format_block(Confusion(1, 0, 0, 0), "x.jsonl", heading="Before")
  assert text.splitlines()[0] == "Before: x.jsonl"
  assert "  F-measure: 1.0" in text


def test_zero_denominators_print_zero():
  c = Confusion(tp=0, tn=0, fp=0, fn=0)
  assert c.total == 0
  assert (c.accuracy, c.precision, c.recall, c.f_measure) == (0.0,) * 4
  text = format_block(c, "empty.jsonl")
  for key in ("accuracy:  0.0", "precision: 0.0", "recall:    0.0",
              "F-measure: 0.0"):
    assert f"  {key}" in text.splitlines()
  only_negatives = Confusion(tp=0, tn=5, fp=0, fn=0)
  assert only_negatives.precision == only_negatives.f_measure == 0.0
  assert only_negatives.accuracy == 1.0


def test_from_labels_counts():
  labels = [True, True, False, False, True]
  preds = [True, False, True, False, True]
  assert Confusion.from_labels(labels, preds) == Confusion(tp=2, tn=1, fp=1,
                                                           fn=1)
  with pytest.raises(ValueError):
    Confusion.from_labels([True], [])


def test_json_line():
  c = Confusion(tp=4, tn=4, fp=1, fn=1)
  line = json_line(c, "v.jsonl", step=3)
  assert "\n" not in line
  obj = json.loads(line)
  assert list(obj) == ["file", "tp", "tn", "fp", "fn", "accuracy",
                       "precision", "recall", "f_measure", "step"]
  assert obj["file"] == "v.jsonl" and obj["tp"] == 4 and obj["step"] == 3
  assert obj["f_measure"] == 0.8000000000000002
  assert c.to_dict()["accuracy"] == 0.8
  with pytest.raises(ValueError):
    json_line(c, "v.jsonl", tp=1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1,
                max_size=40))
def test_matches_sklearn(pairs):
  labels = [int(y) for y, _ in pairs]
  preds = [int(p) for _, p in pairs]
  c = Confusion.from_labels([bool(y) for y in labels],
                            [bool(p) for p in preds])
  assert c.total == len(pairs)
  kw = {"labels": [0, 1], "pos_label": 1, "zero_division": 0}
  assert math.isclose(c.accuracy, skm.accuracy_score(labels, preds))
  assert math.isclose(c.precision, skm.precision_score(labels, preds, **kw))
  assert math.isclose(c.recall, skm.recall_score(labels, preds, **kw))
  assert math.isclose(c.f_measure, skm.f1_score(labels, preds, **kw),
                      abs_tol=1e-12)


# --- Scores: AUC, AP, Brier, ECE ---------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10)), min_size=2, max_size=40))
def test_auc_ap_brier_match_sklearn(pairs):
  y = [b for b, _ in pairs]
  s = [v / 10 for _, v in pairs]  # Coarse scores: many ties.
  if all(y) or not any(y):
    assert metrics.roc_auc(y, s) is None
    if not any(y):
      assert metrics.average_precision(y, s) is None
    return
  assert metrics.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
  assert metrics.average_precision(y, s) == pytest.approx(
      skm.average_precision_score(y, s), abs=1e-12)
  assert metrics.brier(y, s) == pytest.approx(skm.brier_score_loss(y, s), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])),
                min_size=2, max_size=30))
def test_auc_and_ap_match_sklearn(pairs):
  y = [p[0] for p in pairs]
  s = [p[1] for p in pairs]
  if len(set(y)) < 2:
    assert metrics.roc_auc(y, s) is None
    return
  assert metrics.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
  assert metrics.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))


def test_ece_hand_value():
  # Bins [0.1, 0.2): p 0.1, 0.1 with labels 0, 1 -> |0.5 - 0.1| * 2/4;
  # [0.9, 1.0]: p 0.9, 1.0 with labels 1, 1 -> |1 - 0.95| * 2/4.
  got = metrics.expected_calibration_error([0, 1, 1, 1], [0.1, 0.1, 0.9, 1.0])
  assert got == pytest.approx(0.5 * 0.4 + 0.5 * 0.05)
  assert metrics.expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
  assert metrics.expected_calibration_error([], []) is None


def test_score_metrics_and_format():
  sm = metrics.ScoreMetrics.compute([True, False, True], [0.9, 0.2, 0.4])
  assert sm.roc_auc == 1.0 and sm.pr_auc == 1.0
  text = metrics.format_scores(sm, threshold=0.5, invalid=(1, 4))
  assert text.splitlines() == ["  threshold: 0.5", "  invalid answers: 1/4 (0.2500)",
                               "  ROC-AUC:   1.0000", "  PR-AUC:    1.0000",
                               f"  Brier:     {sm.brier:.4f}", f"  ECE:       {sm.ece:.4f}"]
  one_class = metrics.ScoreMetrics.compute([True, True], [0.9, 0.2])
  assert "ROC-AUC:   n/a" in metrics.format_scores(one_class)
  assert json.loads(json.dumps(one_class.to_dict()))["roc_auc"] is None


def test_cumulative_counts_groups_ties():
  u, tp, fp = metrics.cumulative_counts(np.array([1, 0, 1, 0], bool),
                                        np.array([0.5, 0.5, 0.9, 0.1]))
  assert u.tolist() == [0.9, 0.5, 0.1] and tp.tolist() == [1, 2, 2] and fp.tolist() == [0, 1, 2]
