"""ensemble.py: combining members' p(yes), the ensemble's threshold, loading judges."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from palijudge import configs
from palijudge import checkpoint, loader
from palijudge.evaluation import ensemble, probe, reports
from palijudge import params as params_lib
from palijudge.errors import UserError

LCFG = loader.LoadConfig(model="tiny")


def _quiet(*_):
  return None


def test_combine_mean_and_min_on_literal_arrays():
  a = np.array([0.1, 0.5, 0.9], np.float32)
  b = np.array([0.3, 0.2, 0.7], np.float32)
  np.testing.assert_allclose(ensemble.combine([a, b], "mean"), [0.2, 0.35, 0.8], rtol=1e-6)
  np.testing.assert_array_equal(ensemble.combine([a, b], "min"),
                                np.array([0.1, 0.2, 0.7], np.float32))
  assert ensemble.combine([a, b], "mean").dtype == np.float32
  with pytest.raises(UserError, match="mean, min"):
    ensemble.combine([a], "max")


def test_the_mean_of_identical_members_is_bit_identical():
  p = np.random.default_rng(0).random(1000).astype(np.float32)
  for m in (2, 3, 7):
    assert ensemble.combine([p] * m, "mean").tobytes() == p.tobytes()


def _delta(lm, path, seed: int, threshold: float | None = None) -> str:
  """A delta over `lm`'s weights with its attention weights nudged by `seed`."""
  rng = np.random.default_rng(seed)
  keep = params_lib.trainable_pattern("attn").search
  flat = {k: np.asarray(v) + (0.05 * rng.normal(size=v.shape).astype(np.float32)
                              if keep(k) else 0)
          for k, v in params_lib.flatten(lm.params).items()}
  meta = {"tokenizer": lm.spec.tokenizer, "threshold": threshold} if threshold else \
      {"tokenizer": lm.spec.tokenizer}
  checkpoint.save_delta(path, params_lib.unflatten(flat), keep, lm.cfg, lm.spec.weights, meta)
  return str(path)


@pytest.fixture(scope="module")
def deltas(tiny_lm, tmp_path_factory):
  folder = tmp_path_factory.mktemp("deltas")
  return [_delta(tiny_lm, folder / f"d{i}.npz", i) for i in range(2)]


def _report(paths, sets, ecfg, how="mean"):
  judge = ensemble.load_judge(paths, LCFG, "unused", ecfg, how)
  logs = []
  return reports.report(judge.lm, sets, ecfg, log=logs.append, scorer=judge.scorer), logs


def test_an_ensemble_of_identical_checkpoints_is_the_checkpoint(deltas, tiny_examples):
  everything, _, valid = tiny_examples
  sets = {"all": everything, "valid": valid}
  ecfg = configs.EvalConfig(eval_batch=5).resolved()  # 5: a last, partial batch too.
  single, single_log = _report(deltas[:1], sets, ecfg)
  for how in ensemble.COMBINE:
    triple, triple_log = _report([deltas[0]] * 3, sets, ecfg, how)
    for name in sets:
      assert triple[name].p_yes.tobytes() == single[name].p_yes.tobytes()
    assert triple_log == single_log  # The same Result blocks, line for line.


def test_an_ensemble_combines_its_members_example_by_example(deltas, tiny_examples):
  everything, _, _ = tiny_examples
  ecfg = configs.EvalConfig(eval_batch=4).resolved()
  ps = [_report([d], {"all": everything}, ecfg)[0]["all"].p_yes for d in deltas]
  assert not np.array_equal(ps[0], ps[1])  # Different members, or the test shows nothing.
  for how in ensemble.COMBINE:
    got = _report(deltas, {"all": everything}, ecfg, how)[0]["all"]
    np.testing.assert_array_equal(got.p_yes, ensemble.combine(ps, how))
    np.testing.assert_array_equal(got.pred, got.p_yes >= 0.5)


def test_deltas_over_one_base_share_it(deltas):
  a, b = ensemble.load_members(deltas, LCFG, "unused")
  emb = lambda m: m.params["img"]["embedding"]["kernel"]
  assert emb(a) is emb(b)  # One copy of the frozen base.
  q = lambda m: np.asarray(jax.tree.leaves(m.params["llm"]["layers"]["attn"])[0])
  assert not np.array_equal(q(a), q(b))


def test_what_an_ensemble_refuses(deltas, tiny_lm, tmp_path):
  with pytest.raises(UserError, match="needs --mode score"):
    ensemble.load_judge(deltas, LCFG, "unused", configs.EvalConfig(mode="decode"))
  fitted = probe.Probe(np.zeros(tiny_lm.cfg.llm.width), 0.0, 1.0, 0, tiny_lm.spec.weights_id,
                       tiny_lm.cfg.to_dict(), tiny_lm.spec.weights)
  probe.save(str(tmp_path / "p.probe.npz"), fitted)
  with pytest.raises(UserError, match="p.probe.npz: a probe file judges alone"):
    ensemble.load_judge([deltas[0], str(tmp_path / "p.probe.npz")], LCFG, "unused",
                        configs.EvalConfig().resolved())
  judge = ensemble.load_judge([str(tmp_path / "p.probe.npz")], LCFG, "unused",
                              configs.EvalConfig().resolved())
  assert judge.lm.spec.weights_id == tiny_lm.spec.weights_id
  with pytest.raises(UserError, match="is a probe, which gives p\\(yes\\) only"):
    ensemble.load_judge([str(tmp_path / "p.probe.npz")], LCFG, "unused",
                        configs.EvalConfig(mode="decode"))
