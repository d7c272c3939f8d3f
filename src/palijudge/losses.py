"""Training objectives, all computed in f32.

`ce` is the colab's loss: cross-entropy over the full vocabulary at every
suffix token (the answer and its eos), averaged per example, then over the
batch. Vocabulary logits are computed only at those positions (gathered
through `batch["loss_idx"]`), never at every text position.

The yes/no objectives look at one position, the last prompt token, whose
logits predict the answer. With m = logit(yes) - logit(no) and y = 1 for yes:
- `yesno`: 2-way softmax cross-entropy over (yes, no) logits (equals `bce` on m);
- `bce`: binary cross-entropy on m, positives weighted by `pos_weight`;
- `focal`: alpha * (1 - p_t)^gamma * bce_t, where p_t is the probability given
  to the true answer. alpha is a plain scale applied to every example, as in
  the users' CombinedLoss (alpha=1: no scaling); gamma=0 gives exactly `bce`.
  Class balance comes from `pos_weight` / class weights, not from alpha;
- `combined`: bce_weight * bce + focal_weight * focal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from palijudge import model as model_lib

LOSSES = ("ce", "yesno", "bce", "focal", "combined")


def ce_per_example(logits_BxLxV, targets_BxL, weights_BxL):
  """-sum(w * log p(target)) / max(sum(w), 1) per example, f32."""
  logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets_BxL[..., None], axis=-1)[..., 0]
  w = weights_BxL.astype(jnp.float32)
  return (nll * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)


def bce_on_margin(margin_B, label_B, pos_weight=1.0):
  """Binary cross-entropy with logit `margin`; positives weighted."""
  m = margin_B.astype(jnp.float32)
  y = label_B.astype(jnp.float32)
  return -(pos_weight * y * jax.nn.log_sigmoid(m) + (1 - y) * jax.nn.log_sigmoid(-m))


def focal_on_margin(margin_B, label_B, alpha=1.0, gamma=3.0, pos_weight=1.0):
  m = margin_B.astype(jnp.float32)
  y = label_B.astype(jnp.float32)
  p_t = jax.nn.sigmoid(jnp.where(y > 0, m, -m))
  return alpha * (1.0 - p_t) ** gamma * bce_on_margin(m, y, pos_weight)


def answer_pre_logits(pre_BxTxD, prefix_len_B):
  """Decoder output at the last prompt token (index prefix_len - 1)."""
  idx = (prefix_len_B - 1)[:, None, None]
  return jnp.take_along_axis(pre_BxTxD, idx, axis=1)[:, 0]


def batch_loss(model, params, batch: dict, kind: str, yes_no_ids, opts: dict | None = None):
  """Scalar f32 loss for one batch (see `pipeline.collate` for its keys)."""
  opts = opts or {}
  text = batch["text"]
  out = model_lib.forward(model, params, batch.get("image"), text[:, :-1], batch["mask_ar"][:, :-1],
                          batch["mask_input"][:, :-1], batch.get("zimg"))
  if kind == "ce":
    idx = batch["loss_idx"]
    pre = jnp.take_along_axis(out.pre_logits_BxTxD, idx[..., None], axis=1)
    logits = model_lib.text_logits(model, params, pre)
    targets = jnp.take_along_axis(text, idx + 1, axis=1)
    per_ex = ce_per_example(logits, targets, batch["loss_w"])
  else:
    pre = answer_pre_logits(out.pre_logits_BxTxD, batch["prefix_len"])
    yn = model_lib.text_logits(model, params, pre, jnp.asarray(yes_no_ids))
    margin = yn[:, 0] - yn[:, 1]
    label = batch["label"]
    pw = opts.get("pos_weight", 1.0)
    if kind in ("yesno", "bce"):
      per_ex = bce_on_margin(margin, label, pw)
    elif kind == "focal":
      per_ex = focal_on_margin(margin, label, opts.get("focal_alpha", 1.0),
                               opts.get("focal_gamma", 3.0), pw)
    elif kind == "combined":
      per_ex = (opts.get("bce_weight", 0.5) * bce_on_margin(margin, label, pw)
                + opts.get("focal_weight", 0.5) * focal_on_margin(
                    margin, label, opts.get("focal_alpha", 1.0), opts.get("focal_gamma", 3.0), pw))
    else:
      raise ValueError(f"unknown loss {kind!r}")
  if "example_w" in batch:  # Zero-weight rows pad a short last batch.
    w = batch["example_w"].astype(jnp.float32)
    return (per_ex * w).sum() / jnp.maximum(w.sum(), 1.0)
  return per_ex.mean()
