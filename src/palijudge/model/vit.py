"""SigLIP vision encoder (big_vision's `vit.py` layout, `pool_type="none"`).

Parameter paths (under `img/`) match the official checkpoint:
`embedding/{kernel,bias}`, `pos_embedding`, `Transformer/encoderblock/...`
(stacked on a leading depth axis by `nn.scan`), `Transformer/encoder_norm`,
and `head` projecting every patch token to the LLM width.

Weights may be stored in any dtype, or quantized (`--quantize`: qwix QArrays);
every op casts or dequantizes them to `dtype` at use, so frozen half-precision
or quantized weights and f32 trainable ones mix freely.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from palijudge import quantize
from palijudge.model.config import ImgConfig

Dtype = Any
_LN_EPS = 1e-6


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


class _Dense(nn.Module):
  """`x @ kernel + bias` with kernel of shape `in_shape + out_shape`."""
  out_shape: tuple[int, ...]
  contract: int = 1  # How many trailing input axes the kernel consumes.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[x.ndim - self.contract:]
    fan_in = 1
    for d in in_shape:
      fan_in *= d
    kernel = self.param("kernel", nn.initializers.lecun_normal(
        in_axis=tuple(range(self.contract)),
        out_axis=tuple(range(self.contract, self.contract + len(self.out_shape)))),
                        in_shape + self.out_shape)
    bias = self.param("bias", nn.initializers.zeros, self.out_shape)
    axes = (tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract)))
    y = jax.lax.dot_general(x.astype(self.dtype), quantize.weight(kernel, self.dtype),
                            (axes, ((), ())))
    return y + bias.astype(self.dtype)


class _LayerNorm(nn.Module):
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,))
    bias = self.param("bias", nn.initializers.zeros, (d,))
    # Statistics in f32 even for half-precision activations.
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + _LN_EPS)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class _Attention(nn.Module):
  """Multi-head self-attention with biases; q is divided by sqrt(head_dim)."""
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxNxD):
    d = x_BxNxD.shape[-1]
    h = d // self.num_heads
    q = _Dense((self.num_heads, h), dtype=self.dtype, name="query")(x_BxNxD)
    k = _Dense((self.num_heads, h), dtype=self.dtype, name="key")(x_BxNxD)
    v = _Dense((self.num_heads, h), dtype=self.dtype, name="value")(x_BxNxD)
    q = q / jnp.sqrt(h).astype(self.dtype)
    logits = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bnqk,bknh->bqnh", probs, v)
    return _Dense((d,), contract=2, dtype=self.dtype, name="out")(out)


class _MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = _Dense((self.mlp_dim,), dtype=self.dtype, name="Dense_0")(x)
    x = jax.nn.gelu(x, approximate=True)
    return _Dense((d,), dtype=self.dtype, name="Dense_1")(x)


class EncoderBlock(nn.Module):
  """Pre-LN block: x + MHA(LN(x)), then x + MLP(LN(x)). Scanned over depth."""
  cfg: ImgConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, _):
    y = _LayerNorm(self.dtype, name="LayerNorm_0")(x)
    x = x + _Attention(self.cfg.num_heads, self.dtype, name="MultiHeadDotProductAttention_0")(y)
    y = _LayerNorm(self.dtype, name="LayerNorm_1")(x)
    x = x + _MlpBlock(self.cfg.mlp_dim, self.dtype, name="MlpBlock_0")(y)
    return x, None


class _Encoder(nn.Module):
  cfg: ImgConfig
  dtype: Dtype = jnp.float32
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, x):
    block = EncoderBlock
    if self.remat_policy != "none":
      block = nn.remat(block, policy=remat_policy(self.remat_policy), prevent_cse=False)
    scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      length=self.cfg.depth)
    x, _ = scanned(self.cfg, self.dtype, name="encoderblock")(x, None)
    return _LayerNorm(self.dtype, name="encoder_norm")(x)


class _PatchEmbed(nn.Module):
  """Non-overlapping p x p convolution (HWIO kernel), patches row by row."""
  patch: int
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image_BxSxSx3):
    p = self.patch
    kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
                        (p, p, 3, self.width))
    bias = self.param("bias", nn.initializers.zeros, (self.width,))
    y = jax.lax.conv_general_dilated(
        image_BxSxSx3.astype(self.dtype), quantize.weight(kernel, self.dtype), (p, p), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y + bias.astype(self.dtype)
    b, h, w, d = y.shape
    return y.reshape(b, h * w, d)


class ViT(nn.Module):
  """Image (B, S, S, 3) in [-1, 1] -> tokens (B, (S/patch)^2, out_dim)."""
  cfg: ImgConfig
  image_size: int
  out_dim: int
  dtype: Dtype = jnp.float32
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, image_BxSxSx3):
    x = _PatchEmbed(self.cfg.patch_size, self.cfg.width, self.dtype, name="embedding")(
        image_BxSxSx3)
    n = (self.image_size // self.cfg.patch_size) ** 2
    pos = self.param("pos_embedding", _normal(1 / jnp.sqrt(self.cfg.width)), (1, n, self.cfg.width))
    x = x + pos.astype(self.dtype)
    x = _Encoder(self.cfg, self.dtype, self.remat_policy, name="Transformer")(x)
    return _Dense((self.out_dim,), dtype=self.dtype, name="head")(x)


# What a rematerialised layer keeps for its backward pass (`--remat`), one table
# for both towers. The ViT's layers are rematerialised only when a policy other
# than "none" is named; the decoder's layers always run under jax.checkpoint (so
# that each layer's weights are sliced inside it), where "none" keeps every
# matmul output: what a plain backward pass keeps anyway.
REMAT_POLICIES = {
    "none": jax.checkpoint_policies.dots_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_policy(name: str):
  """The `jax.checkpoint_policies` entry of a policy name."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {name!r}; choose {', '.join(REMAT_POLICIES)}")
  return REMAT_POLICIES[name]
