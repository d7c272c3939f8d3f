"""palijudge.evaluation.compare: matching by (image, label), flips, McNemar, paired intervals, the verdict,
and the lottery's lead line."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from palijudge.evaluation import compare, stats
from palijudge.errors import UserError
from palijudge.evaluation.scoring import EvalResult
from palijudge.predictions import PredRow

LABELS = [True] * 6 + [False] * 4


def _rows(preds, labels=LABELS, p=None, images=None) -> list[PredRow]:
  images = images or [f"img/{i}.png" for i in range(len(labels))]
  p = p if p is not None else [0.9 if x else 0.1 for x in preds]
  return [PredRow(str(i), im, y, float(q), bool(x))
          for i, (im, y, x, q) in enumerate(zip(images, labels, preds, p))]


def test_align_matches_by_image_and_label_and_refuses_other_sets():
  a = compare.Side(_rows(LABELS))
  shuffled = compare.Side(list(reversed(a.rows)))
  assert [r.image for r in compare.align(a, shuffled, "v").rows] == [r.image for r in a.rows]
  other = compare.Side(_rows(LABELS, images=[f"img/{i}.png" for i in range(1, 11)]))
  with pytest.raises(UserError, match=r"^v: A and B were not judged on the same examples \(2 "
                                      r"only in A, 2 only in B, e\.g\. img/0\.png \(yes\)\)"):
    compare.align(a, other, "v")
  relabelled = compare.Side(_rows(LABELS, labels=LABELS[::-1]))
  with pytest.raises(UserError, match="not judged on the same examples"):
    compare.align(a, relabelled, "v")


def test_duplicate_images_pair_in_order():
  rows = _rows([True, False], labels=[True, True], images=["x.png", "x.png"])
  side = compare.Side(rows)
  assert compare.align(side, side, "d").rows == rows


def test_one_flipped_image_is_listed_and_not_detectable():
  a = compare.Side(_rows(LABELS))                       # All right.
  b = compare.Side(_rows(LABELS[:-1] + [True]))         # img/9.png (no) judged yes.
  c = compare.compare("valid", a, b)
  assert (c.mcnemar.only_a, c.mcnemar.only_b) == (1, 0)
  assert c.mcnemar.pvalue == pytest.approx(sm_mcnemar([[9, 1], [0, 0]], exact=True).pvalue)
  text = compare.format_comparison(c)
  assert "Result: valid (A)\n  Tp=6 Tn=4 Fp=0 Fn=0\n" in text
  assert "Result: valid (B)\n  Tp=6 Tn=3 Fp=1 Fn=0\n" in text
  assert "Disagreements: 1 of 10 examples\n  A right, B wrong: 1\n" in text
  assert "    img/9.png (no): A no (p 0.100), B yes (p 0.900)\n  B right, A wrong: 0\n" in text
  assert text.endswith("\nNo difference detectable on 10 examples.")
  same = compare.verdict(compare.compare("valid", a, a))
  assert same == "No difference detectable on 10 examples."


def test_a_real_difference_names_the_winner_and_its_interval():
  labels = [True] * 60 + [False] * 60
  a = compare.Side(_rows([True] * 120, labels, p=np.linspace(0.6, 0.9, 120)))  # Always yes.
  b = compare.Side(_rows(labels, labels))                                       # Always right.
  c = compare.compare("big", a, b)
  d = {x.metric: x for x in c.differences}
  assert d["precision"].detectable and not d["recall"].detectable
  sentence = compare.verdict(c)
  iv = d["precision"].interval
  assert sentence.startswith("B is right more often than A: 60 against 0")
  assert (f"B is better than A on precision: +0.50, 95% interval [{iv.low:+.2f}, "
          f"{iv.high:+.2f}]") in sentence
  swapped = compare.verdict(compare.compare("big", b, a))
  assert "A is better than B on precision: +0.50" in swapped


def test_select_takes_a_sets_rows_from_a_prediction_file(tiny_examples):
  _, _, valid = tiny_examples
  rows = [PredRow(str(i), e.raw_image, e.label, 0.5, True) for i, e in enumerate(valid)]
  extra = PredRow("x", "images/other.png", True, 0.5, True)
  got = compare.select([extra] + rows[::-1], valid, "p.tsv", "valid")
  assert [r.image for r in got] == [e.raw_image for e in valid]
  with pytest.raises(UserError, match=r"^p\.tsv: no row for 1 example\(s\) of valid"):
    compare.select(rows[1:], valid, "p.tsv", "valid")


def _result(preds, p=None) -> EvalResult:
  from palijudge.data.examples import Example
  ex = [Example(f"/d/{i}.png", y, "", "yes" if y else "no", "v.jsonl", i + 1, f"{i}.png")
        for i, y in enumerate(LABELS)]
  p = np.asarray(p if p is not None else [0.9 if x else 0.1 for x in preds], np.float32)
  return EvalResult(ex, p, np.asarray(preds, bool), [""] * 10, 0, 0.5)


def test_lottery_says_when_the_lead_is_one_image():
  runs = [_result(LABELS[:-1] + [True]), _result(LABELS), _result([True] * 10)]
  scores = [r.confusion.accuracy for r in runs]
  lines = compare.lottery(["run 1", "run 2", "run 3"], scores, runs, "accuracy", best=1)
  assert lines[0].startswith("valid accuracy over 3 runs: mean 0.8333  std ")
  assert lines[0].endswith(stats.spread(scores).interval.text(4))
  assert lines[2] == f"  run 2: 1.0000  95% interval {stats.wilson(10, 10).text(4)}"
  assert lines[-1].startswith("lead of run 2 over run 1: +0.1000 valid accuracy")
  assert lines[-1].endswith("inside the noise; on 10 validation examples the two runs are "
                            "indistinguishable by accuracy")


def test_lead_beyond_the_noise():
  labels = [True] * 60 + [False] * 60
  from palijudge.data.examples import Example
  ex = [Example(f"/d/{i}.png", y, "", "", "v", i + 1, f"{i}.png") for i, y in enumerate(labels)]
  res = lambda pred: EvalResult(ex, np.where(pred, 0.9, 0.1).astype(np.float32),
                                np.asarray(pred, bool), [""] * 120, 0, 0.5)
  line = compare.lead("run 1", "run 2", res(labels), res([True] * 120), "precision")
  assert line.endswith("beyond the noise on 120 validation examples")


def test_a_model_that_never_says_yes_makes_the_precision_comparison_undefined():
  a = compare.Side(_rows([False] * 10))     # Never says yes: precision n/a in its block.
  b = compare.Side(_rows(LABELS))           # Always right.
  c = compare.compare("valid", a, b)
  d = {x.metric: x for x in c.differences}
  assert d["precision"].undefined == "A never says yes" and d["precision"].interval is None
  assert d["recall"].detectable  # Recall is defined for both: 0 against 1.
  text = compare.format_comparison(c)
  assert "  precision: A n/a  B 1.0000  B - A undefined (A never says yes)\n" in text
  sentence = compare.verdict(c)
  assert "on precision" not in sentence
  assert sentence.endswith("; precision cannot be compared (A never says yes).")
  both = compare.verdict(compare.compare("valid", a, a))
  assert both == ("No difference detectable on 10 examples; precision cannot be compared "
                  "(A never says yes, B never says yes).")


def test_resamples_where_precision_is_undefined_are_left_out():
  y = np.array(LABELS)
  pa = np.zeros(10, bool)
  pa[0] = True                              # One yes: undefined in about a third of resamples.
  pb = y.copy()
  d = stats.paired_difference("precision", y, pa, pb, seed=3, resamples=400)
  diffs = []
  for w in stats.resample_weights(y, 3, 400):
    ok = (w @ pa > 0) & (w @ pb > 0)
    diffs += list((w @ (y & pb) / np.maximum(w @ pb, 1) - w @ (y & pa) / np.maximum(w @ pa, 1))[ok])
  assert 200 < len(diffs) < 400
  assert d.undefined is None and d.delta == 0.0  # 1/1 against 6/6.
  lo, hi = np.percentile(diffs, [2.5, 97.5])
  assert (d.interval.low, d.interval.high) == pytest.approx((lo, hi))


def test_an_auc_lead_is_decided_by_the_auc_bootstrap_not_mcnemar():
  labels = [True] * 30 + [False] * 30
  from palijudge.data.examples import Example
  ex = [Example(f"/d/{i}.png", y, "", "", "v", i + 1, f"{i}.png") for i, y in enumerate(labels)]
  rng = np.random.default_rng(0)
  score = np.where(labels, 0.6, 0.4) + rng.normal(0, 0.15, 60)
  runner_p = np.clip(score + 0.5, 0, 1)     # Nearly always >= 0.5: says yes, wrong on every no.
  best_p = np.clip(score + rng.normal(0, 0.02, 60), 0, 1)
  res = lambda p: EvalResult(ex, p.astype(np.float32), p >= 0.5, [""] * 60, 0, 0.5)
  runner, best = res(runner_p), res(best_p)
  assert stats.mcnemar(runner.pred == np.array(labels), best.pred == np.array(labels)).pvalue < 0.01
  line = compare.lead("run 2", "run 1", best, runner, "auc")
  assert "McNemar p" not in line and "p = " not in line
  assert "decided by a paired bootstrap of the ROC-AUC difference (2000 resamples; McNemar's " \
         "test is about correctness at the threshold, not ROC-AUC): 95% interval [" in line
  assert line.endswith("inside the noise; on 60 validation examples the two runs are "
                       "indistinguishable by auc")
  acc = compare.lead("run 2", "run 1", best, runner, "accuracy")
  assert "decided by the exact McNemar test on the " in acc and "interval" not in acc
  assert acc.endswith("beyond the noise on 60 validation examples")
  tie = compare.lead("run 1", "run 2", best, best, "auc")
  assert tie.startswith("run 1 and run 2 tie on valid auc (")
  assert "run 1 is kept because it ran first: inside the noise" in tie


def test_a_set_with_too_few_yes_examples_cannot_judge_recall():
  # Two yes examples in 10: A finds both, B neither. 11% of the resamples hold no yes example
  # (recall undefined there), so the interval says nothing either way.
  labels = [True] * 2 + [False] * 8
  a = compare.Side(_rows(labels, labels))
  b = compare.Side(_rows([True, False] + [False] * 8, labels))  # Misses one of the two.
  c = compare.compare("valid", a, b)
  recall = {x.metric: x for x in c.differences}["recall"]
  assert recall.interval.contains(0.0) and recall.too_small and not recall.detectable
  assert recall.left_out == pytest.approx(0.8 ** 10, abs=0.02)
  sentence = compare.verdict(c)
  assert not sentence.startswith("No difference detectable on 10 examples;")
  assert sentence.startswith("No difference detectable on 10 examples by accuracy")
  assert ("the set is too small to judge recall (2 yes examples in 10: "
          f"{recall.left_out:.0%} of the resamples had none)") in sentence
  assert "(too few examples: " in compare.format_comparison(c)
  # One yes example, found by A alone: every kept resample says -1, yet it is one example.
  one = [True] + [False] * 9
  c1 = compare.compare("valid", compare.Side(_rows(one, one)),
                       compare.Side(_rows([False] * 10, one)))
  assert "better than B on recall" not in compare.verdict(c1)
  assert "too small to judge recall (1 yes example in 10" in compare.verdict(c1)


def test_enough_yes_examples_judge_recall_as_before():
  labels = [True] * 60 + [False] * 60
  found = compare.Side(_rows(labels, labels))
  missed = compare.Side(_rows([False] * 60 + [False] * 60, labels))
  recall = {x.metric: x for x in compare.compare("big", missed, found).differences}["recall"]
  assert recall.left_out == 0.0 and not recall.too_small and recall.detectable
