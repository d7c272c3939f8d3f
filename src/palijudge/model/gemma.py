"""Gemma and Gemma 2 decoders (big_vision's `gemma.py` layout).

One code path serves both families; Gemma 2 differs only by config flags
(`post_norms`, `attn_logits_softcap`, `final_logits_softcap`,
`query_pre_attn_norm`). Like big_vision, every layer uses global attention
(no local sliding window).

Parameter paths (under `llm/`): `embedder/input_embedding`, `layers/...`
stacked on a leading depth axis by `nn.scan`, `final_norm/scale`.

Attention runs over an explicit key/value buffer: for training and scoring
the buffer is the sequence itself; for decoding it is a KV cache that the
call writes into at `write_index` and returns. Masks are always explicit
(B, T, S) booleans, built by `model.make_attn_mask`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from palijudge import quantize
from palijudge.model import lora as lora
from palijudge.model.config import LlmConfig
from palijudge.model.vit import remat_policy

Dtype = Any
# big_vision's masked-logit value (not -inf, so fully masked rows stay finite).
_NEG_INF = -2.3819763e38


class KVCache(NamedTuple):
  """Per-layer keys/values, stacked over depth: (L, B, S, K, H) each."""
  k: jax.Array
  v: jax.Array


def apply_rope(x_BxTxNxH, positions_BxT, max_wavelength: float = 10_000.0):
  """Rotary embedding on halves (x1, x2) of each head vector, in f32."""
  h = x_BxTxNxH.shape[-1]
  freq = (2.0 / h) * jnp.arange(h // 2, dtype=jnp.float32)
  radians = positions_BxT[..., None].astype(jnp.float32) / (max_wavelength ** freq)
  radians = radians[..., None, :]
  sin, cos = jnp.sin(radians), jnp.cos(radians)
  x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def _gather(x_BxSx_, idx_BxT):
  """x[b, idx[b, t]] along axis 1."""
  idx = idx_BxT.reshape(idx_BxT.shape + (1,) * (x_BxSx_.ndim - 2))
  return jnp.take_along_axis(x_BxSx_, idx, axis=1)


def softcap(x, cap: float):
  return jnp.tanh(x / cap) * cap if cap else x


class RMSNorm(nn.Module):
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + 1e-6)
    return (y * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)


class _Weight(nn.Module):
  """A bare weight `w` (big_vision's `Einsum` modules hold just this)."""
  shape: tuple[int, ...]

  @nn.compact
  def __call__(self):
    return self.param("w", nn.initializers.normal(stddev=0.02), self.shape)


class Attention(nn.Module):
  cfg: LlmConfig
  dtype: Dtype = jnp.float32

  def _project_qkv(self, x, query_idx):
    c, d = self.cfg, x.shape[-1]
    n, k, h = c.num_heads, c.num_kv_heads, c.head_dim
    x = x.astype(self.dtype)
    xq = x if query_idx is None else _gather(x, query_idx)
    if n == k:  # big_vision stores one fused weight when there is no sharing.
      w = quantize.weight(_Weight((3, n, d, h), name="qkv_einsum")(), self.dtype)
      q = jnp.einsum("BTD,NDH->BTNH", xq, w[0])
      kk, v = jnp.einsum("BSD,CNDH->CBSNH", x, w[1:])
    else:
      wq = quantize.weight(_Weight((n, d, h), name="q_einsum")(), self.dtype)
      wkv = quantize.weight(_Weight((2, k, d, h), name="kv_einsum")(), self.dtype)
      q = jnp.einsum("BTD,NDH->BTNH", xq, wq)
      kk, v = jnp.einsum("BSD,CKDH->CBSKH", x, wkv)
    return q, kk, v

  @nn.compact
  def __call__(self, x_BxSxD, positions_BxS, mask_BxTxS, cache_k=None, cache_v=None,
               write_index=None, query_idx=None):
    """Queries at every position, or only at `query_idx` (B, T); keys at all S."""
    c = self.cfg
    q, k, v = self._project_qkv(x_BxSxD, query_idx)
    q_pos = positions_BxS if query_idx is None else _gather(positions_BxS, query_idx)
    q = apply_rope(q, q_pos)
    k = apply_rope(k, positions_BxS)
    if c.query_pre_attn_norm == "rsqrt_emb_per_head":
      q = q * (c.width // c.num_heads) ** -0.5
    else:
      q = q * c.head_dim ** -0.5
    if cache_k is not None:  # Write this step's k/v, then attend the buffer.
      idx = (0, write_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), idx)
      v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), idx)
    b, t, n, h = q.shape
    g = n // c.num_kv_heads  # Query head n uses kv head n // g.
    q = q.reshape(b, t, c.num_kv_heads, g, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k.astype(self.dtype),
                        preferred_element_type=jnp.float32)
    logits = softcap(logits, c.attn_logits_softcap)
    logits = jnp.where(mask_BxTxS[:, None, None], logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    enc = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(self.dtype)).reshape(b, t, n, h)
    w_out = quantize.weight(_Weight((n, h, c.width), name="attn_vec_einsum")(), self.dtype)
    out = jnp.einsum("BTNH,NHD->BTD", enc, w_out)
    return out, (k, v) if cache_k is not None else None


class FeedForward(nn.Module):
  """GeGLU: (gelu_tanh(x W0) * (x W1)) @ linear."""
  cfg: LlmConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d, f = self.cfg.width, self.cfg.mlp_dim
    w = self.param("gating_einsum", nn.initializers.normal(stddev=0.02), (2, d, f))
    w_out = self.param("linear", nn.initializers.normal(stddev=0.02), (f, d))
    x = x.astype(self.dtype)
    w = quantize.weight(w, self.dtype)
    gate = jax.nn.gelu(jnp.einsum("BTD,DF->BTF", x, w[0]), approximate=True)
    return jnp.einsum("BTF,FD->BTD", gate * jnp.einsum("BTD,DF->BTF", x, w[1]),
                      quantize.weight(w_out, self.dtype))


class Block(nn.Module):
  """x += [PostNorm](Attn(PreNorm(x))); x += [PostNorm](MLP(PreNorm(x)))."""
  cfg: LlmConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, layer_cache, positions, mask, write_index, query_idx=None):
    """With `query_idx` (B, T), outputs only those positions: (B, T, D)."""
    ck, cv = layer_cache if layer_cache is not None else (None, None)
    y = RMSNorm(self.dtype, name="pre_attention_norm")(x)
    if query_idx is not None:
      mask = _gather(mask, query_idx)
      x = _gather(x, query_idx)
    y, new_cache = Attention(self.cfg, self.dtype, name="attn")(
        y, positions, mask, ck, cv, write_index, query_idx)
    if self.cfg.post_norms:
      y = RMSNorm(self.dtype, name="post_attention_norm")(y)
    x = x + y
    y = RMSNorm(self.dtype, name="pre_ffw_norm")(x)
    y = FeedForward(self.cfg, self.dtype, name="mlp")(y)
    if self.cfg.post_norms:
      y = RMSNorm(self.dtype, name="post_ffw_norm")(y)
    return x + y, new_cache


class Embedder(nn.Module):
  """Token embedding, reused (tied) as the output layer."""
  vocab_size: int
  width: int

  def setup(self):
    self.input_embedding = self.param(
        "input_embedding", nn.initializers.normal(stddev=self.width ** -0.5),
        (self.vocab_size, self.width))

  def encode(self, tokens_BxT, dtype):
    # Text embeddings are scaled by sqrt(width); image tokens never are.
    x = jnp.take(self.input_embedding, tokens_BxT, axis=0).astype(dtype)
    return x * jnp.asarray(math.sqrt(self.width), dtype)

  def decode(self, x_BxTxD, ids=None):
    """Logits in f32 over the vocabulary, or over the rows `ids` only."""
    table = self.input_embedding if ids is None else jnp.take(self.input_embedding, ids, axis=0)
    return jnp.einsum("...D,VD->...V", x_BxTxD, table.astype(x_BxTxD.dtype),
                      preferred_element_type=jnp.float32)


class Gemma(nn.Module):
  """Decoder over already-embedded inputs (B, T, D) -> pre-logits (B, T, D)."""
  cfg: LlmConfig
  dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  lora_alpha: float = lora.DEFAULT_ALPHA  # Scale of LoRA adapters in the params, if any.

  def setup(self):
    c = self.cfg
    self.embedder = Embedder(c.vocab_size, c.width)
    block = Block
    if self.remat_policy != "none":
      block = nn.remat(block, policy=remat_policy(self.remat_policy), prevent_cse=False)
    self.layers = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=c.depth)(c, self.dtype)
    self.final_norm = RMSNorm(self.dtype)

  def embed(self, tokens_BxT):
    return self.embedder.encode(tokens_BxT, self.dtype)

  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache: KVCache | None = None,
               write_index=None) -> tuple[jax.Array, KVCache | None]:
    layer_cache = (cache.k, cache.v) if cache is not None else None
    x, new = self.layers(x_BxTxD.astype(self.dtype), layer_cache, positions_BxT, mask_BxTxS,
                         write_index)
    return self.final_norm(x), (KVCache(*new) if new is not None else None)

  def hidden_at(self, x_BxSxD, positions_BxS, mask_BxSxS, query_idx_BxT):
    """Pre-logits (B, T, D) at `query_idx` only: the training and scoring path.

    Every layer attends over all S tokens, but the last one computes queries,
    the MLP and the final norm only where an output is needed (the answer
    position, or the positions the loss reads). Each layer's weights are
    sliced from the stack inside a `jax.checkpoint`, so the backward pass
    re-reads them instead of keeping a per-layer copy of every weight (which a
    plain scan does: a second copy of the whole decoder).
    """
    stacked = self.variables["params"]["layers"]
    block = Block(self.cfg, self.dtype, parent=None)  # Detached, applied by hand.
    policy = remat_policy(self.remat_policy)

    @functools.partial(jax.checkpoint, policy=policy, prevent_cse=False)
    def layer(x, i):
      params = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), stacked)
      # Adapters, if any, folded in one layer at a time.
      params = lora.merge_layer(params, self.lora_alpha, self.dtype)
      return block.apply({"params": params}, x, None, positions_BxS, mask_BxSxS, None)[0]

    x = x_BxSxD.astype(self.dtype)
    x, _ = jax.lax.scan(lambda x, i: (layer(x, i), None), x, jnp.arange(self.cfg.depth - 1))
    last = lora.merge_layer(jax.tree.map(lambda a: a[-1], stacked), self.lora_alpha, self.dtype)
    x, _ = block.apply({"params": last}, x, None, positions_BxS, mask_BxSxS, None, query_idx_BxT)
    return self.final_norm(x)

  def logits(self, pre_BxTxD, ids=None):
    """f32 logits before final soft-capping (big_vision feeds these to the loss)."""
    return self.embedder.decode(pre_BxTxD, ids)
