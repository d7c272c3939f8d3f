"""PaliGemma: SigLIP image tokens + text, through a Gemma decoder.

The model sees the sequence [image tokens (P), text tokens (T)]. Which token
may attend to which is decided by `make_attn_mask` alone. Functions here are
pure: `params` is a plain nested dict (`{"img": ..., "llm": ...}`), never
closed over.

One typed input, `Inputs` (text, its masks, and the image or its cached
tokens), feeds every entry point: the training/scoring pass (`forward`,
`forward_at`), yes/no scoring (`yes_no_logits`) and greedy decoding, whose
prefill assembles [image tokens, text] with the same `_assemble` as the
forward pass.

Scoring and decoding:
- score: the prompt-only batch goes through the model once; the decoder
  output at the last prompt token is multiplied by the `yes` and `no`
  embedding rows only (2 logits, not the vocabulary), p(yes) = softmax[0].
- decode: big_vision's greedy sampler. A prefill pass writes the prompt's keys
  and values into a cache of `prefill + max_new` slots; generated token k goes
  to slot `prefill + k` at position `num_valid + k`, attending every real
  earlier token and itself. Decoding stops once every row has produced eos.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from palijudge.inputs import Inputs
from palijudge.model.config import ModelConfig
from palijudge.model import lora
from palijudge.model.gemma import Gemma, KVCache, softcap
from palijudge.model.vit import ViT
from palijudge.params import flatten

Params = dict[str, Any]


def make_attn_mask(mask_ar_BxS, mask_input_BxS):
  """Prefix-LM attention mask, (B, S, S) bool, query x key.

  With c = cumsum(mask_ar), query i may attend key j iff c[j] <= c[i] and both
  are real tokens (mask_input). Tokens with mask_ar 0 (image, prompt) form one
  fully connected block; each mask_ar 1 token (the answer) starts a new causal
  step. Unlike big_vision's training forward pass, padding is masked out here,
  so pads never leak into real positions. A padding query sees nothing; its
  output is discarded.
  """
  cum = jnp.cumsum(mask_ar_BxS, axis=1)
  causal = cum[:, None, :] <= cum[:, :, None]
  valid = mask_input_BxS.astype(bool)
  return causal & valid[:, None, :] & valid[:, :, None]


class PaliGemma(nn.Module):
  cfg: ModelConfig
  dtype: Any = jnp.float32
  remat_policy: str = "none"
  lora_alpha: float = lora.DEFAULT_ALPHA  # Scale of LoRA adapters, if the params carry any.

  def setup(self):
    c = self.cfg
    self.img = ViT(c.img, c.image_size, c.llm.width, self.dtype, self.remat_policy)
    self.llm = Gemma(c.llm, self.dtype, self.remat_policy, self.lora_alpha)

  def embed_image(self, image_BxSxSx3):
    """Image tokens as fed to the LLM (ViT + head), (B, P, D), unscaled."""
    return self.img(image_BxSxSx3)

  def embed_text(self, tokens_BxT):
    return self.llm.embed(tokens_BxT)

  def decode(self, x_BxTxD, positions_BxT, mask_BxTxS, cache=None, write_index=None):
    return self.llm(x_BxTxD, positions_BxT, mask_BxTxS, cache, write_index)

  def logits(self, pre_BxTxD, ids=None):
    return self.llm.logits(pre_BxTxD, ids)

  def __call__(self, image_BxSxSx3, text_BxT, mask_ar_BxT):
    """Used by `init` only; see `forward` for the real entry point."""
    out = _forward_bound(self, Inputs(text_BxT, mask_ar_BxT, jnp.ones_like(text_BxT),
                                      image_BxSxSx3))
    return self.logits(out.pre_logits_BxTxD)


@dataclasses.dataclass(frozen=True)
class ForwardOut:
  """Decoder output at the text positions (image positions dropped)."""
  pre_logits_BxTxD: jax.Array  # After the final norm; logits = this @ emb.T.
  zimg_BxPxD: jax.Array


def _assemble(model: PaliGemma, x: Inputs):
  """[image tokens, text] embeddings (B, S, D), positions (B, S), mask (B, S, S), zimg."""
  zimg = model.embed_image(x.image) if x.zimg is None else x.zimg
  b, p = zimg.shape[:2]
  emb = jnp.concatenate([zimg.astype(model.dtype), model.embed_text(x.text)], axis=1)
  full_ar = jnp.concatenate([jnp.zeros((b, p), x.mask_ar.dtype), x.mask_ar], axis=1)
  full_in = jnp.concatenate([jnp.ones((b, p), x.mask_input.dtype), x.mask_input], axis=1)
  mask = make_attn_mask(full_ar, full_in)
  # Right padding only, so positions are 0..S-1 at every real token.
  positions = jnp.broadcast_to(jnp.arange(emb.shape[1]), emb.shape[:2])
  return emb, positions, mask, zimg


def _forward_bound(model: PaliGemma, x: Inputs):
  emb, positions, mask, zimg = _assemble(model, x)
  pre, _ = model.decode(emb, positions, mask)
  return ForwardOut(pre[:, zimg.shape[1]:], zimg)


def _forward_at_bound(model: PaliGemma, x: Inputs, idx):
  emb, positions, mask, zimg = _assemble(model, x)
  return model.llm.hidden_at(emb, positions, mask, idx + zimg.shape[1])


def forward_at(model: PaliGemma, params: Params, x: Inputs, text_idx_BxK):
  """Pre-logits (B, K, D) at text positions `text_idx` only (see `Gemma.hidden_at`).

  Equals `forward(...).pre_logits_BxTxD` gathered at `text_idx`, at a fraction
  of the last layer's cost.
  """
  return model.apply({"params": params}, x, text_idx_BxK, method=_forward_at_bound)


def forward(model: PaliGemma, params: Params, x: Inputs) -> ForwardOut:
  """Training/scoring pass over [image, text] (`x.zimg` skips the ViT).

  Output position t predicts text token t + 1.
  """
  return model.apply({"params": params}, x, method=_forward_bound)


def text_logits(model: PaliGemma, params: Params, pre_BxTxD, ids=None):
  """f32 logits (before any final soft-cap, as big_vision's loss uses them)."""
  return model.apply({"params": params}, pre_BxTxD, ids, method=PaliGemma.logits)


def capped_logits(cfg: ModelConfig, logits):
  """The decoder's own output logits: final soft-cap applied (Gemma 2)."""
  return softcap(logits, cfg.llm.final_logits_softcap)


def build(cfg: ModelConfig, dtype=jnp.float32, remat: str = "none",
          lora_alpha: float = lora.DEFAULT_ALPHA) -> PaliGemma:
  return PaliGemma(cfg, dtype, remat, lora_alpha)


def param_shapes(cfg: ModelConfig) -> Params:
  """The full parameter tree as ShapeDtypeStructs; allocates nothing. A fresh tree per call
  (the caller may change it); the trace behind it runs once per config."""
  return jax.tree.map(lambda x: x, _traced_shapes(cfg))


@functools.lru_cache(maxsize=8)
def _traced_shapes(cfg: ModelConfig) -> Params:
  # Loading reads these shapes several times (placement, the loader, the device line).
  model = build(cfg)
  s = cfg.image_size
  image = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  text = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), image, text, text)
  return shapes["params"]


def init_params(cfg: ModelConfig, seed: int) -> Params:
  model = build(cfg)
  s = cfg.image_size
  image = jnp.zeros((1, s, s, 3), jnp.float32)
  text = jnp.zeros((1, 8), jnp.int32)
  return jax.jit(model.init)(jax.random.PRNGKey(seed), image, text, text)["params"]


def describe_params(cfg: ModelConfig) -> list[str]:
  """One line per parameter (path, shape, dtype at init) and the totals."""
  flat = flatten(param_shapes(cfg))
  lines, totals = [], {"img": 0, "llm": 0}
  for name in sorted(flat):
    sd = flat[name]
    n = math.prod(sd.shape)
    totals[name.split("/")[0]] += n
    lines.append(f"{name}\t{tuple(sd.shape)}\t{sd.dtype}\t{n}")
  attn = sum(math.prod(v.shape) for k, v in flat.items()
             if k.startswith("llm/layers/attn/"))
  lines += [f"# num_arrays\t{len(flat)}", f"# total_params\t{sum(totals.values())}",
            f"# img_params\t{totals['img']}", f"# llm_params\t{totals['llm']}",
            f"# trainable_llm_layers_attn_params\t{attn}"]
  return lines


@functools.partial(jax.jit, static_argnames=("model",))
def yes_no_logits(model, params, x: Inputs, prefix_len_B, yes_no_ids) -> jax.Array:
  """(B, 2) f32 logits [yes, no] where the answer is predicted: the last prompt token."""
  pre = forward_at(model, params, x, (prefix_len_B - 1)[:, None])
  return text_logits(model, params, pre[:, 0], yes_no_ids)


def p_yes(yes_no_logits_Bx2) -> np.ndarray:
  return np.asarray(jax.nn.softmax(jnp.asarray(yes_no_logits_Bx2, jnp.float32), axis=-1)[:, 0])


@dataclasses.dataclass(frozen=True)
class DecodeOut:
  tokens_BxN: np.ndarray       # Greedy tokens; slots never generated stay 0.
  logp_BxN: np.ndarray         # log p of each chosen token.
  first_logits_BxV: np.ndarray  # Logits for the first generated token.


def _prefill(model, x: Inputs, cache_len: int, cache_dtype):
  emb, positions, mask, zimg = _assemble(model, x)
  b, s = emb.shape[:2]
  valid = jnp.concatenate([jnp.ones((b, zimg.shape[1]), jnp.int32),
                           x.mask_input.astype(jnp.int32)], axis=1)
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, cache_len - s)))
  c = model.cfg.llm
  shape = (c.depth, b, cache_len, c.num_kv_heads, c.head_dim)
  cache = KVCache(jnp.zeros(shape, cache_dtype), jnp.zeros(shape, cache_dtype))
  pre, cache = model.decode(emb, positions, mask, cache, 0)
  last = valid.sum(1) - 1
  pre_last = jnp.take_along_axis(pre, last[:, None, None], axis=1)[:, 0]
  valid_cache = jnp.pad(valid, ((0, 0), (0, cache_len - s))).astype(bool)
  return model.logits(pre_last), cache, last + 1, valid_cache, s


def _greedy(model, x: Inputs, max_new: int, eos_id: int, cache_dtype):
  """Bound-module body of `greedy_decode` (called through `model.apply`)."""
  s0 = x.text.shape[1] + model.cfg.num_patches
  logits, cache, n_valid, valid, s = _prefill(model, x, s0 + max_new, cache_dtype)
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
    emb = model.embed_text(tok[:, None])
    pos = (n_valid + k - 1)[:, None]
    pre, cache = model.decode(emb, pos, valid[:, None, :], cache, slot)
    # big_vision soft-caps the decode steps' logits (not the prefill's).
    new_tok, new_lp = pick(capped_logits(model.cfg, model.logits(pre[:, 0])))
    tokens = tokens.at[:, k].set(new_tok)
    logps = logps.at[:, k].set(new_lp)
    return k + 1, tokens, logps, cache, valid, done | (new_tok == eos_id), new_tok

  state = (jnp.int32(1), tokens, logps, cache, valid, done, tok)
  _, tokens, logps, *_ = jax.lax.while_loop(cond, body, state)
  return tokens, logps, logits


@functools.partial(jax.jit, static_argnames=("model", "max_new", "eos_id", "cache_dtype"))
def greedy_decode(model, params, x: Inputs, max_new: int, eos_id: int,
                  cache_dtype=jnp.float32):
  return model.apply({"params": params}, x, max_new, eos_id, cache_dtype, method=_greedy)


def decode(model, params, x: Inputs, max_new: int, eos_id: int, cache_dtype=jnp.float32):
  # The cached decoder path takes plain weights (quantized ones merge into the compute dtype).
  params = lora.merge(params, model.lora_alpha, model.dtype)
  tokens, logps, first = greedy_decode(model, params, x, max_new, eos_id, cache_dtype)
  return DecodeOut(np.asarray(tokens), np.asarray(logps), np.asarray(first))
