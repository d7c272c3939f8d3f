"""palijudge.evaluation.stats: Wilson coverage by simulation; bootstrap, McNemar and t intervals checked
against scikit-learn, scipy and statsmodels on literal data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from palijudge.evaluation import stats

# Ten validation images: 6 yes, 4 no; two models' p(yes) and predictions at 0.5.
Y = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
P_A = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.3, 0.4, 0.2, 0.1, 0.05])
P_B = np.array([0.95, 0.85, 0.6, 0.4, 0.7, 0.2, 0.6, 0.3, 0.35, 0.1])
SK = {"accuracy": lambda y, p, w: skm.accuracy_score(y, p, sample_weight=w),
      "precision": lambda y, p, w: skm.precision_score(y, p, sample_weight=w, zero_division=0),
      "recall": lambda y, p, w: skm.recall_score(y, p, sample_weight=w, zero_division=0),
      "f1": lambda y, p, w: skm.f1_score(y, p, sample_weight=w, zero_division=0)}


@pytest.mark.parametrize("n, rate", [(20, 0.5), (50, 0.3)])
def test_wilson_covers_a_known_rate_95_percent_of_the_time(n, rate):
  rng = np.random.default_rng(0)
  hits = [stats.wilson(int(k), n).contains(rate) for k in rng.binomial(n, rate, 3000)]
  assert 0.93 <= np.mean(hits) <= 0.97


def test_precision_interval_covers_the_true_precision_by_simulation():
  # Labels 50 % yes, the judge says yes to 80 % of yes and 30 % of no: precision 0.4/0.55.
  rng = np.random.default_rng(1)
  hits = []
  for _ in range(1000):
    y = rng.random(60) < 0.5
    pred = np.where(y, rng.random(60) < 0.8, rng.random(60) < 0.3)
    hits.append(stats.interval("precision", y, pred).contains(0.4 / 0.55))
  assert 0.93 <= np.mean(hits) <= 0.97


def test_wilson_is_statsmodels_and_undefined_without_trials():
  assert stats.wilson(7, 10).to_list() == pytest.approx(
      list(proportion_confint(7, 10, alpha=0.05, method="wilson")))
  assert stats.wilson(0, 0) is None
  iv = stats.Intervals.of(Y, np.zeros(10, bool))  # Nothing predicted yes: precision undefined.
  assert iv.precision is None and iv.roc_auc is None and "precision n/a" in iv.line()


@pytest.mark.parametrize("metric", ["accuracy", "precision", "recall", "f1"])
def test_bootstrap_is_the_percentiles_of_scikit_learn_on_the_same_resamples(metric):
  pred = P_A >= 0.5
  weights = np.concatenate(list(stats.resample_weights(Y, seed=3, resamples=300)))
  sk = [SK[metric](Y, pred, w) for w in weights]
  np.testing.assert_allclose(stats.statistic(metric, weights, Y, pred, None), sk)
  got = stats.bootstrap(metric, Y, pred, seed=3, resamples=300)
  assert got.to_list() == pytest.approx(list(np.percentile(sk, [2.5, 97.5])))


def test_auc_bootstrap_matches_scikit_learn_and_scipy():
  weights = np.concatenate(list(stats.resample_weights(Y, seed=5, resamples=200,
                                                       stratified=True)))
  assert (weights[:, Y].sum(1) == 6).all() and (weights[:, ~Y].sum(1) == 4).all()
  sk = [skm.roc_auc_score(Y, P_B, sample_weight=w) for w in weights]
  np.testing.assert_allclose(stats.statistic("auc", weights, Y, P_B >= 0.5, P_B), sk)
  # The same design as scipy's two-sample bootstrap: yes and no resampled independently.
  rng = np.random.default_rng(0)
  y = np.r_[np.ones(20, bool), np.zeros(20, bool)]
  s = np.r_[rng.normal(1, 1, 20), rng.normal(0, 1, 20)]
  auc = lambda pos, neg, axis=-1: (pos[..., :, None] > neg[..., None, :]).mean((-2, -1))
  ref = scipy.stats.bootstrap((s[y], s[~y]), auc, n_resamples=20000, method="percentile",
                              vectorized=True, rng=np.random.default_rng(1))
  mine = stats.bootstrap("auc", y, s >= 0.5, s, resamples=20000)
  assert mine.low == pytest.approx(ref.confidence_interval.low, abs=0.01)
  assert mine.high == pytest.approx(ref.confidence_interval.high, abs=0.01)


def test_auc_interval_with_one_example_of_a_class_and_with_one_class():
  y = np.r_[np.ones(9, bool), False]
  p = np.linspace(0.1, 0.9, 10)[::-1]
  assert stats.bootstrap("auc", y, p >= 0.5, p) is not None  # scipy would refuse this set.
  assert stats.bootstrap("auc", np.ones(5, bool), np.ones(5, bool), np.ones(5)) is None
  assert stats.Intervals.of(np.ones(5, bool), np.ones(5, bool), np.full(5, 0.7)).roc_auc is None


def test_paired_difference_is_b_minus_a_on_the_same_resamples():
  pa, pb = P_A >= 0.5, P_B >= 0.5
  for metric in ("precision", "recall"):
    d = stats.paired_difference(metric, Y, pa, pb, P_A, P_B, seed=2, resamples=300)
    weights = np.concatenate(list(stats.resample_weights(Y, seed=2, resamples=300)))
    diffs = [SK[metric](Y, pb, w) - SK[metric](Y, pa, w) for w in weights]
    assert d.interval.to_list() == pytest.approx(list(np.percentile(diffs, [2.5, 97.5])))
    assert d.delta == pytest.approx(SK[metric](Y, pb, None) - SK[metric](Y, pa, None))
  d = stats.paired_difference("auc", Y, pa, pb, P_A, P_B)
  assert d.delta == pytest.approx(skm.roc_auc_score(Y, P_B) - skm.roc_auc_score(Y, P_A))
  same = stats.paired_difference("precision", Y, pa, pa, P_A, P_A)
  assert same.interval.to_list() == [0.0, 0.0] and not same.detectable


def test_a_clear_difference_is_detectable():
  y = np.r_[np.ones(100, bool), np.zeros(100, bool)]
  good, bad = y.copy(), np.ones(200, bool)  # Perfect against "always yes".
  d = stats.paired_difference("precision", y, bad, good)
  assert d.detectable and d.interval.low > 0.3


def test_exact_mcnemar_is_statsmodels_and_a_binomial_test():
  a = np.array([1, 1, 1, 1, 0, 1, 1, 0, 1, 1], bool)  # A right?
  b = np.array([1, 0, 0, 0, 1, 0, 1, 0, 1, 0], bool)  # B right?
  m = stats.mcnemar(a, b)
  assert (m.only_a, m.only_b) == (5, 1)
  table = [[3, 5], [1, 1]]
  assert m.pvalue == pytest.approx(sm_mcnemar(table, exact=True).pvalue)
  assert m.pvalue == pytest.approx(scipy.stats.binomtest(1, 6, 0.5).pvalue)
  assert stats.mcnemar(a, a).pvalue == 1.0


def test_spread_is_numpy_and_a_student_t_interval():
  values = [0.7, 0.8, 0.75, 0.9, 0.6]
  s = stats.spread(values)
  lo, hi = scipy.stats.t.interval(0.95, 4, loc=np.mean(values), scale=scipy.stats.sem(values))
  assert (s.n, s.mean, s.std) == (5, pytest.approx(0.75), pytest.approx(np.std(values, ddof=1)))
  assert s.std / np.sqrt(5) == pytest.approx(scipy.stats.sem(values))  # What the t interval uses.
  assert stats.spread([0.5]).std == 0.0
  assert (s.low, s.high) == (0.6, 0.9) and s.interval.to_list() == pytest.approx([lo, hi])
  assert stats.spread([0.5]).interval is None
  assert stats.spread([0.9, 0.9]).interval.to_list() == [0.9, 0.9]
  assert stats.spread([0.2, 1.0]).interval.to_list()[1] == 1.0  # Clipped: metrics are <= 1.


def test_interval_line_and_dict():
  iv = stats.Intervals.of(Y, P_A >= 0.5, P_A)
  line = iv.line()
  assert line.startswith("  95% interval: accuracy [") and "  ROC-AUC [" in line
  acc = proportion_confint(9, 10, method="wilson")
  assert f"accuracy [{acc[0]:.3f}, {acc[1]:.3f}]" in line
  d = iv.to_dict(auc_key="auc")
  assert set(d) == {"accuracy_ci", "precision_ci", "recall_ci", "auc_ci"}
  assert d["recall_ci"] == pytest.approx(list(proportion_confint(5, 6, method="wilson")))
  assert stats.Intervals.of(Y, P_A >= 0.5, P_A) == iv  # Seeded: the same every time.
