"""Yes/no prediction: `score` (one forward pass) and `decode` (greedy + KV cache).

score: the prompt-only batch goes through the model once; the decoder output
at the last prompt token is multiplied by the `yes` and `no` embedding rows
only (2 logits, not the vocabulary), and p(yes) = softmax(yes, no)[0].

decode: big_vision's greedy sampler. A prefill pass writes the prompt's keys
and values into a cache of `prefill + max_new` slots; generated token k goes
to slot `prefill + k` at position `num_valid + k`, attending every real
earlier token and itself. Decoding stops once every row has produced eos.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from palijudge import lora
from palijudge import model as model_lib
from palijudge.gemma import KVCache


@functools.partial(jax.jit, static_argnames=("model",))
def yes_no_logits(model, params, batch: dict, yes_no_ids) -> jax.Array:
  """(B, 2) f32 logits [yes, no] at the answer position (prompt-only or teacher-forced)."""
  idx = (batch["prefix_len"] - 1)[:, None]
  pre = model_lib.forward_at(model, params, batch.get("image"), batch["text"], batch["mask_ar"],
                             batch["mask_input"], idx, batch.get("zimg"))
  return model_lib.text_logits(model, params, pre[:, 0], yes_no_ids)


def p_yes(yes_no_logits_Bx2) -> np.ndarray:
  return np.asarray(jax.nn.softmax(jnp.asarray(yes_no_logits_Bx2, jnp.float32), axis=-1)[:, 0])


@dataclasses.dataclass(frozen=True)
class DecodeOut:
  tokens_BxN: np.ndarray       # Greedy tokens; slots never generated stay 0.
  logp_BxN: np.ndarray         # log p of each chosen token.
  first_logits_BxV: np.ndarray  # Logits for the first generated token.


def _prefill(model, batch, cache_len: int, cache_dtype):
  image_tokens = model.embed_image(batch["image"]) if batch.get("zimg") is None else batch["zimg"]
  b, p = image_tokens.shape[:2]
  x = jnp.concatenate([image_tokens.astype(model.dtype), model.embed_text(batch["text"])], 1)
  full_ar = jnp.concatenate([jnp.zeros((b, p), jnp.int32), batch["mask_ar"]], axis=1)
  valid = jnp.concatenate([jnp.ones((b, p), jnp.int32), batch["mask_input"]], axis=1)
  s = x.shape[1]
  mask = model_lib.make_attn_mask(full_ar, valid)
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, cache_len - s)))
  c = model.cfg.llm
  shape = (c.depth, b, cache_len, c.num_kv_heads, c.head_dim)
  cache = KVCache(jnp.zeros(shape, cache_dtype), jnp.zeros(shape, cache_dtype))
  positions = jnp.broadcast_to(jnp.arange(s), (b, s))
  pre, cache = model.decode(x, positions, mask, cache, 0)
  last = valid.sum(1) - 1
  pre_last = jnp.take_along_axis(pre, last[:, None, None], axis=1)[:, 0]
  valid_cache = jnp.pad(valid, ((0, 0), (0, cache_len - s))).astype(bool)
  return model.logits(pre_last), cache, last + 1, valid_cache, s


def _greedy(model, batch, max_new: int, eos_id: int, cache_dtype):
  """Bound-module body of `greedy_decode` (called through `model.apply`)."""
  s0 = batch["text"].shape[1] + model.cfg.num_patches
  logits, cache, n_valid, valid, s = _prefill(model, batch, s0 + max_new, cache_dtype)
  b = logits.shape[0]

  def pick(logits_BxV):
    tok = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits_BxV)
    return tok, jnp.take_along_axis(logp, tok[:, None], axis=1)[:, 0]

  tok, lp = pick(logits)
  tokens = jnp.zeros((b, max_new), jnp.int32).at[:, 0].set(tok)
  logps = jnp.zeros((b, max_new), jnp.float32).at[:, 0].set(lp)
  done = tok == eos_id

  def cond(state):
    k, _, _, _, _, done, _ = state
    return (k < max_new) & ~jnp.all(done)

  def body(state):
    k, tokens, logps, cache, valid, done, tok = state
    slot = s + k - 1
    valid = valid.at[:, slot].set(True)
    x = model.embed_text(tok[:, None])
    pos = (n_valid + k - 1)[:, None]
    pre, cache = model.decode(x, pos, valid[:, None, :], cache, slot)
    # big_vision soft-caps the decode steps' logits (not the prefill's).
    new_tok, new_lp = pick(model_lib.capped_logits(model.cfg, model.logits(pre[:, 0])))
    tokens = tokens.at[:, k].set(new_tok)
    logps = logps.at[:, k].set(new_lp)
    return k + 1, tokens, logps, cache, valid, done | (new_tok == eos_id), new_tok

  state = (jnp.int32(1), tokens, logps, cache, valid, done, tok)
  _, tokens, logps, *_ = jax.lax.while_loop(cond, body, state)
  return tokens, logps, logits


@functools.partial(jax.jit, static_argnames=("model", "max_new", "eos_id", "cache_dtype"))
def greedy_decode(model, params, batch: dict, max_new: int, eos_id: int,
                  cache_dtype=jnp.float32):
  return model.apply({"params": params}, batch, max_new, eos_id, cache_dtype, method=_greedy)


def decode(model, params, batch: dict, max_new: int, eos_id: int, cache_dtype=jnp.float32):
  batch = {k: batch[k] for k in ("image", "zimg", "text", "mask_ar", "mask_input") if k in batch}
  params = lora.merge(params)  # The cached decoder path takes plain weights.
  tokens, logps, first = greedy_decode(model, params, batch, max_new, eos_id, cache_dtype)
  return DecodeOut(np.asarray(tokens), np.asarray(logps), np.asarray(first))
