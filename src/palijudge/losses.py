"""Training objectives (`--loss`), all computed in f32.

`ce` is the colab's loss: cross-entropy over the full vocabulary at every
suffix token (the answer and its eos), averaged per example, then over the
batch. Vocabulary logits are computed only at those positions (gathered
through `batch.loss_idx`), never at every text position.

The yes/no objectives look at one position, the last prompt token, whose
logits predict the answer. With m = logit(yes) - logit(no), p = sigmoid(m) =
p(yes), y = 1 for a `yes` label and q the target (q = y, or with label
smoothing eps: q = y (1 - eps) + eps / 2):
- `yesno`: 2-way softmax cross-entropy over the (yes, no) logits:
  -(q log softmax_yes + (1 - q) log softmax_no). Numerically equal to `bce`
  without `pos_weight` (the 2-way softmax of (yes, no) is sigmoid(m)).
- `bce`: -(pos_weight q log p + (1 - q) log(1 - p)); `pos_weight` multiplies
  the positive (`yes`) term only, as torch's BCEWithLogitsLoss does.
- `focal`: -alpha (pos_weight q (1 - p)^gamma log p + (1 - q) p^gamma log(1 - p)).
  For a hard label that is alpha (1 - p_t)^gamma bce_t, p_t being the
  probability given to the true answer; gamma = 0 gives exactly alpha * bce.
  **alpha scales both classes alike**, as in the users' CombinedLoss
  (`F_loss = alpha * (1 - pt)**gamma * BCE`): alpha = 1 (the default) means no
  scaling at all, yes and no examples weigh the same. It is *not* the
  RetinaNet/torchvision alpha (alpha on positives, 1 - alpha on negatives,
  under which alpha = 1 would give `no` examples zero weight); that weighting
  is `--class-weight A,1-A` here.
- `combined`: bce_weight * bce + focal_weight * focal (defaults 0.5 / 0.5,
  alpha = 1, gamma = 3: the users' CombinedLoss).

Class weights (W_YES, W_NO) multiply each example's loss by the weight of its
label (any kind, `ce` included); the batch loss stays the mean over the batch's
real examples (not divided by the sum of weights, so a batch of one class
still feels its weight). `auto` = sklearn's "balanced": N / (2 N_class) on the
training split, so the average weight over the training set is 1.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from palijudge.model import paligemma as model_lib
from palijudge.data.batch import Batch
from palijudge.configs import LossConfig, balanced_class_weight  # noqa: F401


def ce_per_example(logits_BxLxV, targets_BxL, weights_BxL, label_smoothing: float = 0.0):
  """-sum(w * log p(target)) / max(sum(w), 1) per example, f32.

  With label smoothing eps the target distribution is (1 - eps) one-hot +
  eps / V over the vocabulary.
  """
  logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets_BxL[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
  w = weights_BxL.astype(jnp.float32)
  return (nll * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)


def soft_target(label_B, label_smoothing: float = 0.0):
  """q = y (1 - eps) + eps / 2, f32 (B,)."""
  y = label_B.astype(jnp.float32)
  return y * (1.0 - label_smoothing) + 0.5 * label_smoothing


def bce_on_margin(margin_B, label_B, pos_weight=1.0, label_smoothing: float = 0.0):
  """Binary cross-entropy with logit `margin`; the positive term weighted."""
  m = margin_B.astype(jnp.float32)
  q = soft_target(label_B, label_smoothing)
  return -(pos_weight * q * jax.nn.log_sigmoid(m) + (1 - q) * jax.nn.log_sigmoid(-m))


def yesno_ce(yes_no_logits_Bx2, label_B, label_smoothing: float = 0.0):
  """2-way softmax cross-entropy over the [yes, no] logits (B, 2) -> (B,)."""
  logp = jax.nn.log_softmax(yes_no_logits_Bx2.astype(jnp.float32), axis=-1)
  q = soft_target(label_B, label_smoothing)
  return -(q * logp[:, 0] + (1 - q) * logp[:, 1])


def focal_on_margin(margin_B, label_B, alpha=1.0, gamma=3.0, pos_weight=1.0,
                    label_smoothing: float = 0.0):
  """alpha * focal loss (see the module docstring); gamma = 0 equals alpha * bce."""
  m = margin_B.astype(jnp.float32)
  q = soft_target(label_B, label_smoothing)
  log_p, log_1mp = jax.nn.log_sigmoid(m), jax.nn.log_sigmoid(-m)
  # (1 - p)^gamma and p^gamma in log space: finite gradients even at p = 0 or 1.
  mod_pos = jnp.exp(gamma * log_1mp) if gamma else 1.0
  mod_neg = jnp.exp(gamma * log_p) if gamma else 1.0
  return -alpha * (pos_weight * q * mod_pos * log_p + (1 - q) * mod_neg * log_1mp)


def yes_no_per_example(yn_Bx2, label_B, cfg: LossConfig):
  """Per-example loss (B,) of the yes/no kinds from the [yes, no] logits."""
  eps, pw = cfg.label_smoothing, cfg.pos_weight
  margin = yn_Bx2[:, 0].astype(jnp.float32) - yn_Bx2[:, 1].astype(jnp.float32)
  if cfg.kind == "yesno":
    return yesno_ce(yn_Bx2, label_B, eps)
  if cfg.kind == "bce":
    return bce_on_margin(margin, label_B, pw, eps)
  focal = focal_on_margin(margin, label_B, cfg.focal_alpha, cfg.focal_gamma, pw, eps)
  if cfg.kind == "focal":
    return focal
  if cfg.kind == "combined":
    return cfg.bce_weight * bce_on_margin(margin, label_B, pw, eps) + cfg.focal_weight * focal
  raise ValueError(f"unknown loss {cfg.kind!r}")


def apply_class_weight(per_ex_B, label_B, class_weight: tuple[float, float] | None):
  """Multiplies each example's loss by W_YES or W_NO (no-op when None)."""
  if class_weight is None:
    return per_ex_B
  w = jnp.where(label_B > 0, class_weight[0], class_weight[1]).astype(jnp.float32)
  return per_ex_B * w


def batch_loss(model, params, batch: Batch, cfg: LossConfig | str, yes_no_ids):
  """Scalar f32 loss for one teacher-forced batch (answer included in `text`)."""
  cfg = LossConfig(kind=cfg) if isinstance(cfg, str) else cfg
  text = batch.text
  # The decoder's output is needed only where the loss reads it.
  idx = batch.loss_idx if cfg.kind == "ce" else (batch.prefix_len - 1)[:, None]
  pre = model_lib.forward_at(model, params, batch.inputs().drop_last(), idx)
  if cfg.kind == "ce":
    logits = model_lib.text_logits(model, params, pre)
    targets = jnp.take_along_axis(text, idx + 1, axis=1)
    per_ex = ce_per_example(logits, targets, batch.loss_w, cfg.label_smoothing)
  else:
    yn = model_lib.text_logits(model, params, pre[:, 0], jnp.asarray(yes_no_ids))
    per_ex = yes_no_per_example(yn, batch.label, cfg)
  if cfg.class_weight is not None:
    per_ex = apply_class_weight(per_ex, batch.label, cfg.class_weight)
  if batch.example_w is not None:  # Zero-weight rows pad a short last batch.
    w = batch.example_w.astype(jnp.float32)
    return (per_ex * w).sum() / jnp.maximum(w.sum(), 1.0)
  return per_ex.mean()
