"""Training objectives against hand-computed values, and their refusals."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from palijudge import losses
from palijudge.data import batch as pipeline
from palijudge.model import paligemma as predict
from palijudge.errors import UserError
from palijudge.losses import LossConfig
from palijudge.data.tokenizer import Tokenizer, tokenize

from testing import FIXTURES, load_fixture_model

MARGINS = [2.0, -1.0, 0.5, -3.0]
LABELS = [1, 1, 0, 0]


def _sig(x: float) -> float:
  return 1.0 / (1.0 + math.exp(-x))


def _hand_bce(m: float, y: int, pw: float = 1.0, eps: float = 0.0) -> float:
  q = y * (1 - eps) + eps / 2
  p = _sig(m)
  return -(pw * q * math.log(p) + (1 - q) * math.log(1 - p))


def _hand_focal(m: float, y: int, alpha: float, gamma: float, pw: float = 1.0) -> float:
  p = _sig(m)
  p_t = p if y else 1 - p
  return alpha * (1 - p_t) ** gamma * _hand_bce(m, y, pw)


def _arr(x):
  return jnp.asarray(x, jnp.float32)


def test_bce_hand_values():
  got = losses.bce_on_margin(_arr(MARGINS), jnp.asarray(LABELS))
  assert got.dtype == jnp.float32
  # -log sigmoid(2) = log(1 + e^-2) = 0.126928...
  assert float(got[0]) == pytest.approx(0.12692801, abs=1e-6)
  want = [_hand_bce(m, y) for m, y in zip(MARGINS, LABELS)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bce_pos_weight_and_smoothing():
  got = losses.bce_on_margin(_arr(MARGINS), jnp.asarray(LABELS), pos_weight=3.0,
                             label_smoothing=0.1)
  want = [_hand_bce(m, y, 3.0, 0.1) for m, y in zip(MARGINS, LABELS)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # pos_weight touches positives only.
  plain = losses.bce_on_margin(_arr(MARGINS), jnp.asarray(LABELS))
  weighted = losses.bce_on_margin(_arr(MARGINS), jnp.asarray(LABELS), pos_weight=3.0)
  np.testing.assert_allclose(weighted[:2], 3 * plain[:2], rtol=1e-6)
  np.testing.assert_allclose(weighted[2:], plain[2:], rtol=1e-6)


def test_yesno_is_two_way_softmax_ce():
  yn = _arr([[1.5, -0.5], [0.0, 1.0], [2.0, 2.5], [-1.0, -4.0]])
  got = losses.yesno_ce(yn, jnp.asarray(LABELS))
  for i, ((a, b), y) in enumerate(zip(np.asarray(yn), LABELS)):
    log_z = math.log(math.exp(a) + math.exp(b))
    assert float(got[i]) == pytest.approx(log_z - (a if y else b), rel=1e-6)
  np.testing.assert_allclose(got, losses.bce_on_margin(yn[:, 0] - yn[:, 1], jnp.asarray(LABELS)),
                             rtol=1e-6)


def test_focal_hand_values():
  got = losses.focal_on_margin(_arr(MARGINS), jnp.asarray(LABELS), alpha=0.5, gamma=2.0)
  want = [_hand_focal(m, y, 0.5, 2.0) for m, y in zip(MARGINS, LABELS)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # m = 2, y = 1: p_t = sigmoid(2) = 0.880797; (1 - p_t)^2 = 0.0142094.
  assert float(got[0]) == pytest.approx(0.5 * 0.01420934 * 0.12692801, rel=1e-5)


def test_focal_gamma_zero_equals_bce():
  m, y = _arr(np.linspace(-6, 6, 13)), jnp.asarray(np.arange(13) % 2)
  np.testing.assert_allclose(losses.focal_on_margin(m, y, alpha=1.0, gamma=0.0),
                             losses.bce_on_margin(m, y), rtol=1e-6)
  np.testing.assert_allclose(losses.focal_on_margin(m, y, 1.0, 0.0, pos_weight=2.5),
                             losses.bce_on_margin(m, y, pos_weight=2.5), rtol=1e-6)


def test_combined_and_alpha_scales_both_classes():
  cfg = LossConfig(kind="combined")  # alpha 1, gamma 3, 0.5 / 0.5
  yn = jnp.stack([_arr(MARGINS), jnp.zeros(4)], 1)
  got = losses.yes_no_per_example(yn, jnp.asarray(LABELS), cfg)
  want = [0.5 * _hand_bce(m, y) + 0.5 * _hand_focal(m, y, 1.0, 3.0)
          for m, y in zip(MARGINS, LABELS)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  a1 = losses.focal_on_margin(_arr(MARGINS), jnp.asarray(LABELS), alpha=1.0, gamma=2.0)
  a4 = losses.focal_on_margin(_arr(MARGINS), jnp.asarray(LABELS), alpha=0.25, gamma=2.0)
  np.testing.assert_allclose(a4, 0.25 * a1, rtol=1e-6)  # yes and no rows alike


def test_class_weight_reproduces_retinanet_alpha():
  y = jnp.asarray(LABELS)
  focal = losses.focal_on_margin(_arr(MARGINS), y, alpha=1.0, gamma=2.0)
  got = losses.apply_class_weight(focal, y, (0.25, 0.75))
  want = [(0.25 if yy else 0.75) * _hand_focal(m, yy, 1.0, 2.0) for m, yy in zip(MARGINS, LABELS)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ce_label_smoothing_hand_value():
  logits = _arr([[[1.0, 2.0, 0.0]]])
  targets = jnp.asarray([[1]])
  w = jnp.ones((1, 1))
  z = math.log(math.exp(1) + math.exp(2) + 1)
  logp = [1 - z, 2 - z, 0 - z]
  got = float(losses.ce_per_example(logits, targets, w, label_smoothing=0.3)[0])
  assert got == pytest.approx(0.7 * -logp[1] + 0.3 * -sum(logp) / 3, rel=1e-6)
  assert float(losses.ce_per_example(logits, targets, w)[0]) == pytest.approx(z - 2, rel=1e-6)


def test_balanced_class_weight():
  assert losses.balanced_class_weight(85, 15) == pytest.approx((100 / 170, 100 / 30))
  with pytest.raises(UserError, match="both classes"):
    losses.balanced_class_weight(10, 0)


@pytest.mark.parametrize("kw,match", [
    (dict(kind="hinge"), "--loss must be one of"),
    (dict(kind="ce", pos_weight=2.0), "--pos-weight applies to"),
    (dict(kind="yesno", pos_weight=2.0), "--pos-weight applies to"),
    (dict(kind="bce", pos_weight=2.0, class_weight=(1.0, 2.0)), "use one"),
    (dict(kind="bce", focal_gamma=2.0), "--focal-gamma applies to --loss focal/combined"),
    (dict(kind="focal", bce_weight=1.0), "--bce-weight applies to --loss combined"),
    (dict(kind="focal", focal_gamma=-1.0), "--focal-gamma >= 0"),
    (dict(kind="combined", bce_weight=0.0, focal_weight=0.0), "not both 0"),
    (dict(kind="bce", label_smoothing=1.0), "--label-smoothing"),
    (dict(kind="bce", class_weight=(1.0, 0.0)), "--class-weight"),
    (dict(kind="bce", pos_weight=float("nan")), "finite"),
])
def test_bad_configs_refused(kw, match):
  with pytest.raises(UserError, match=match):
    LossConfig(**kw)


def test_config_is_hashable():
  cfg = LossConfig(kind="focal", class_weight=[0.5, 2])
  assert cfg.class_weight == (0.5, 2.0)
  assert hash(cfg) == hash(LossConfig(kind="focal", class_weight=(0.5, 2.0)))


@pytest.fixture(scope="module")
def tiny():
  cfg, model, params = load_fixture_model("paligemma-tiny")
  tok = Tokenizer.load(FIXTURES / "paligemma-tiny" / "tokenizer.model")
  labels = [True, False, True]
  texts = [tokenize(tok, "is it ok", "yes" if y else "no") for y in labels]
  rng = np.random.default_rng(0)
  pixels = rng.uniform(-1, 1, (3, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
  batch = pipeline.collate(texts, labels, pixels, batch_size=4)
  prompt = pipeline.collate([tokenize(tok, "is it ok")] * 3, labels, pixels, batch_size=4)
  ids = (tok.yes_id, tok.no_id)
  yn = predict.yes_no_logits(model, params, prompt.inputs(), prompt.prefix_len, jnp.asarray(ids))[:3]
  return model, params, batch, ids, np.asarray(yn, np.float64), np.array(labels)


@pytest.mark.parametrize("cfg", [
    LossConfig(kind="yesno", label_smoothing=0.2),
    LossConfig(kind="focal", focal_alpha=0.5, focal_gamma=2.0, pos_weight=2.0),
    LossConfig(kind="combined", class_weight=(0.4, 3.0))])
def test_batch_loss_matches_hand_values_on_the_model(tiny, cfg):
  model, params, batch, ids, yn, labels = tiny
  got = float(losses.batch_loss(model, params, batch, cfg, ids))
  m = yn[:, 0] - yn[:, 1]
  per = []
  for mi, y in zip(m, labels):
    bce = _hand_bce(mi, int(y), cfg.pos_weight, cfg.label_smoothing)
    focal = _hand_focal(mi, int(y), cfg.focal_alpha, cfg.focal_gamma, cfg.pos_weight)
    v = {"yesno": bce, "bce": bce, "focal": focal,
         "combined": cfg.bce_weight * bce + cfg.focal_weight * focal}[cfg.kind]
    if cfg.class_weight:
      v *= cfg.class_weight[0] if y else cfg.class_weight[1]
    per.append(v)
  assert got == pytest.approx(np.mean(per), rel=2e-4, abs=1e-5)  # Padding row ignored.


def test_batch_loss_ce_accepts_a_kind_string(tiny):
  model, params, batch, ids, _, _ = tiny
  a = float(losses.batch_loss(model, params, batch, "ce", ids))
  w = float(losses.batch_loss(model, params, batch, LossConfig(class_weight=(2.0, 2.0)), ids))
  assert w == pytest.approx(2 * a, rel=1e-6)
