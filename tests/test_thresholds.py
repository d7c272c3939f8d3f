"""Threshold selection on one split: targets, exact counts, unreachable targets, set names.

Applying the pick to every evaluated set is reports.report's (tests/test_evaluate.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palijudge.evaluation import thresholds
from palijudge.errors import UserError
from palijudge.metrics import Confusion
from palijudge.evaluation.thresholds import Target, parse_target, pick

Y = [True, True, True, False, True, False, False, False]
P = [0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.1]


def test_parse_target():
  assert parse_target("f1") == Target("f1")
  assert parse_target("precision=0.95") == Target("precision", 0.95)
  assert str(parse_target(" Recall=0.9 ")) == "recall=0.9"
  for bad in ("accuracy", "precision", "precision=1.5", "recall=x", "f1=0.3", "precision=0"):
    with pytest.raises(UserError, match="--target"):
      parse_target(bad)


def test_f1_pick_is_midpoint_and_exact():
  choice = pick(Y, P, Target("f1"), "valid")
  # Best F1: yes for p >= 0.6 (tp 4, fp 1): F1 = 8/9; cut halfway between 0.6 and 0.4.
  assert choice.threshold == pytest.approx(0.5)
  assert choice.confusion == Confusion(tp=4, tn=3, fp=1, fn=0)
  pred = np.array(P) >= choice.threshold
  assert Confusion.from_labels(Y, pred.tolist()) == choice.confusion


def test_precision_and_recall_targets():
  c = pick(Y, P, Target("precision", 1.0), "valid")
  assert c.threshold == pytest.approx(0.75) and c.confusion.recall == 0.75
  c = pick(Y, P, Target("recall", 1.0), "valid")
  assert c.threshold == pytest.approx(0.5) and c.confusion.precision == 0.8
  c = pick(Y, P, Target("recall", 0.5), "valid")
  assert c.confusion.precision == 1.0 and c.confusion.recall == 0.75  # Best precision, then recall.


def test_unreachable_target_says_best():
  y, p = [True, False, True], [0.9, 0.95, 0.2]
  with pytest.raises(UserError) as e:
    pick(y, p, Target("precision", 0.9), "valid.jsonl")
  msg = str(e.value)
  assert "cannot be reached on valid.jsonl" in msg and "best precision is 0.6667" in msg
  assert "\n" not in msg
  lenient = pick(y, p, Target("precision", 0.9), "valid.jsonl", strict=False)
  assert not lenient.reached and lenient.confusion.precision == pytest.approx(2 / 3)
  assert "NOT reached" in lenient.describe()


def test_one_class_split_refused():
  with pytest.raises(UserError, match="needs both yes and no"):
    pick([True, True], [0.3, 0.8], Target("f1"), "safe")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 99)), min_size=2, max_size=30),
       st.floats(0.05, 1.0))
def test_pick_meets_floor_and_matches_counts(pairs, floor):
  y = [b for b, _ in pairs]
  p = [v / 100 for _, v in pairs]
  if all(y) or not any(y):
    return
  for target in (Target("precision", floor), Target("recall", floor), Target("f1")):
    c = pick(y, p, target, "v", strict=False)
    assert 0 < c.threshold < 1
    assert Confusion.from_labels(y, [q >= c.threshold for q in p]) == c.confusion
    if target.kind == "recall":
      assert c.reached and c.confusion.recall >= floor - 1e-12
    if target.kind == "precision" and c.reached:
      assert c.confusion.precision >= floor - 1e-12


def test_resolve_split():
  names = ["dataset/set1/all", "dataset/set1/train.jsonl", "dataset/set1/valid.jsonl", "safe"]
  assert thresholds.resolve_split("valid", names) == "dataset/set1/valid.jsonl"
  assert thresholds.resolve_split("safe", names) == "safe"
  with pytest.raises(UserError, match="not one of the evaluated sets"):
    thresholds.resolve_split("test", names)

