"""probe.py: the linear-probe baseline (fit, judge, the file and its hostile variants)."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest

from palijudge import configs
from palijudge import checkpoint, loader
from palijudge.evaluation import probe, scoring
from palijudge.data import examples, splits, synthetic
from palijudge.errors import UserError


def _quiet(*_):
  return None


@pytest.fixture(scope="module")
def demo_split(tmp_path_factory):
  """The demo's data (200 generated ads, 40 held out, stratified), as `make demo` makes it."""
  data = synthetic.make_dataset(tmp_path_factory.mktemp("demo") / "demo", n=200, seed=0)
  rows = examples.read_jsonl(data)
  return splits.split(rows, 40, 0, stratify=True)


def test_probe_learns_the_demo_rule_on_the_tiny_random_encoder(tiny_lm, demo_split):
  train, valid = demo_split
  fitted, results = probe.fit_and_report(tiny_lm, train, {"train": train, "valid": valid},
                                         configs.EvalConfig().resolved(), log=_quiet)
  assert results["valid"].confusion.accuracy >= 0.9
  assert results["valid"].mode == "score" and results["valid"].threshold == 0.5
  assert fitted.n_train == 160 and fitted.folds == 5 and fitted.C in probe.C_GRID
  # Shuffled labels leave nothing to learn: the same probe then does not reach 0.9.
  shuffled = np.random.default_rng(0).permutation([e.label for e in train])
  flipped = [dataclasses.replace(e, label=bool(y), suffix="yes" if y else "no")
             for e, y in zip(train, shuffled)]
  _, noise = probe.fit_and_report(tiny_lm, flipped, {"valid": valid},
                                  configs.EvalConfig().resolved(), log=_quiet)
  assert noise["valid"].confusion.accuracy < 0.9


def test_fit_folds_the_standardisation_into_the_weights():
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  rng = np.random.default_rng(1)
  x = rng.normal(3.0, [1.0, 5.0, 0.1], size=(40, 3))
  y = x[:, 0] + 0.2 * rng.normal(size=40) > 3.0
  coef, intercept, c, folds = probe.fit_arrays(x, y)
  assert folds == 5 and c in probe.C_GRID
  ref = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced",
                                                           max_iter=10_000)).fit(x, y)
  p = probe.Probe(coef, intercept, c, folds, "w", {}, "m").p_yes(x)
  np.testing.assert_allclose(p, ref.predict_proba(x)[:, 1], rtol=1e-5, atol=1e-6)


def test_fit_with_too_few_or_one_class():
  x = np.arange(8, dtype=float).reshape(4, 2)
  with pytest.raises(UserError, match="yes=4, no=0"):
    probe.fit_arrays(x, np.ones(4, bool))
  _, _, c, folds = probe.fit_arrays(x, np.array([True, True, True, False]))
  assert (c, folds) == (1.0, 0)  # One `no`: nothing to cross-validate, C fixed.
  assert "C fixed" in probe.Probe(np.zeros(2), 0.0, c, folds, "w", {}, "m").describe()


def _fitted(lm, split):
  train, _ = split
  return probe.fit(lm, probe.encoder_features(lm, "first"), train[:40], "first")


def test_file_round_trip_and_stored_threshold(tiny_lm, demo_split, tmp_path):
  fitted = dataclasses.replace(_fitted(tiny_lm, demo_split), threshold=0.3)
  path = tmp_path / "p.probe.npz"
  probe.save(str(path), fitted)
  back = probe.load(path)
  np.testing.assert_array_equal(back.coef, fitted.coef)
  assert back.intercept == fitted.intercept and back.weights_id == tiny_lm.spec.weights_id
  assert probe.is_probe(path) and not probe.is_probe(tiny_lm.spec.weights)
  assert checkpoint.stored_threshold(path) == 0.3
  with zipfile.ZipFile(path) as z:  # Plain arrays and JSON: nothing to unpickle.
    assert sorted(z.namelist()) == ["palijudge/meta.npy", "params/probe/coef.npy",
                                    "params/probe/intercept.npy"]


def _write(path, arrays: dict, meta) -> None:
  with zipfile.ZipFile(path, "w") as z:
    for key, a in arrays.items():
      with z.open(key + ".npy", "w") as f:
        np.lib.format.write_array(f, np.asarray(a), allow_pickle=True)
    if meta is not None:
      raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
      with z.open(checkpoint.META_KEY + ".npy", "w") as f:
        np.lib.format.write_array(f, np.frombuffer(raw, np.uint8))


META = {"kind": probe.KIND, "dim": 2, "C": 1.0, "folds": 0, "weights_id": "abc",
        "model_config": {}, "encoder": "m.npz", "base": None, "gif_frame": "first",
        "n_train": 4, "threshold": None}
GOOD = {"params/probe/coef": np.zeros(2), "params/probe/intercept": np.zeros(1)}


@pytest.mark.parametrize("arrays, meta, needle", [
    ({**GOOD, "params/probe/coef": np.array([{"x": 1}, None], dtype=object)}, META,
     "cannot read"),
    ({**GOOD, "params/probe/coef": np.array(["a", "b"])}, META, "unreadable probe weights"),
    ({**GOOD, "params/probe/coef": np.array([np.nan, 1.0])}, META, "not finite"),
    ({**GOOD, "params/probe/coef": np.zeros(3)}, META, "shape"),
    (GOOD, {**META, "threshold": 2.0}, "'threshold'"),
    (GOOD, {**META, "C": -1}, "'C'"),
    (GOOD, {**META, "dim": True}, "'dim'"),
    (GOOD, {**META, "gif_frame": "all"}, "'gif_frame'"),
    (GOOD, {**META, "kind": "other"}, "not a probe file"),
    (GOOD, b"\xff{not json", "unreadable palijudge/meta"),
    ({**GOOD, "params/evil": np.zeros(1)}, META, "unexpected"),
])
def test_hostile_probe_files_are_refused_in_one_line(tmp_path, arrays, meta, needle):
  path = tmp_path / "evil.npz"
  _write(path, arrays, meta)
  with pytest.raises(UserError, match=needle) as e:
    probe.load(path)
  assert "evil.npz" in str(e.value) and "\n" not in str(e.value)


def test_not_an_archive(tmp_path):
  path = tmp_path / "junk.npz"
  path.write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(UserError, match="junk.npz"):
    probe.load(path)


def test_probe_refuses_another_encoder_and_settings_it_cannot_follow(tiny_lm, demo_split,
                                                                     tmp_path):
  fitted = _fitted(tiny_lm, demo_split)
  other = loader.load(loader.write_random_model("tiny", str(tmp_path), seed=1))
  with pytest.raises(UserError, match="fitted on the encoder of"):
    probe.check_model(fitted, other)
  probe.check_model(fitted, tiny_lm)
  features = probe.encoder_features(tiny_lm, "first")
  for ecfg, needle in ((configs.EvalConfig(mode="decode"), "--mode decode"),
                       (configs.EvalConfig(gif_frame="all").resolved(), "--gif-frame all")):
    with pytest.raises(UserError, match=needle):
      scoring.evaluate(None, demo_split[1], ecfg, scorer=probe.scorer(fitted, features))


def test_probe_beside_a_decode_evaluation_scores_one_frame():
  for ecfg in (configs.EvalConfig(mode="decode"),
               configs.EvalConfig(gif_frame="all", gif_combine="min").resolved()):
    got = probe.probe_config(ecfg)
    assert (got.mode, got.gif_frame, got.gif_combine, got.threshold) == ("score", "first",
                                                                         None, 0.5)
  plain = configs.EvalConfig().resolved()
  assert probe.probe_config(plain) is plain
