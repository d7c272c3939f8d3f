"""LoRA: rank-r adapters on the decoder's attention and MLP projections.

For a weight W (per layer, e.g. q_einsum (N, D, H)) the adapter is a pair
A (in, r), B (r, out) and the layer uses W + (alpha / r) * A @ B (alpha: `--lora-alpha`, default 16), with `in`
and `out` the weight's input and output axes. B starts at zero, so training
starts from the base model exactly. Adapters live in the parameter tree at
`llm/layers/lora/<weight>/{a,b}`, stacked over layers like the weights they
adapt; the training path merges them one layer at a time (inside the layer's
checkpoint), so no merged copy of the whole decoder ever exists. `merge`
folds them into the base for evaluation and export; a delta checkpoint of a
LoRA run holds the adapters alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from palijudge import quantize
from palijudge.params import flatten, unflatten

PREFIX = "llm/layers/lora/"
DEFAULT_ALPHA = 16.0  # The scale is alpha / rank; saved with every LoRA run's config.
# weight path under llm/layers -> (A axes, B axes, delta axes) as einsum letters.
_SPECS = {
    "attn/q_einsum/w": ("dr", "rnh", "ndh"),
    "attn/kv_einsum/w": ("dr", "rckh", "ckdh"),
    "attn/qkv_einsum/w": ("dr", "rcnh", "cndh"),
    "attn/attn_vec_einsum/w": ("nhr", "rd", "nhd"),
    "mlp/gating_einsum": ("dr", "rcf", "cdf"),
    "mlp/linear": ("fr", "rd", "fd"),
}


def _shapes(spec: tuple[str, str, str], weight_shape: tuple[int, ...], rank: int):
  """Per-layer A and B shapes from the weight's (per-layer) shape."""
  a_ax, b_ax, w_ax = spec
  size = dict(zip(w_ax, weight_shape))
  size["r"] = rank
  return tuple(size[c] for c in a_ax), tuple(size[c] for c in b_ax)


def adapter_shapes(layer_shapes: dict, rank: int) -> dict:
  """{path: ShapeDtypeStruct} of the adapters for stacked `llm/layers` shapes."""
  flat = flatten(layer_shapes)
  out = {}
  for name, spec in _SPECS.items():
    if name in flat:
      depth, *per_layer = flat[name].shape
      a, b = _shapes(spec, tuple(per_layer), rank)
      out[f"lora/{name}/a"] = jax.ShapeDtypeStruct((depth, *a), jnp.float32)
      out[f"lora/{name}/b"] = jax.ShapeDtypeStruct((depth, *b), jnp.float32)
  return out


def with_adapter_shapes(shapes: dict, rank: int) -> dict:
  """A model's shape tree with its rank-`rank` adapters' shapes added (a LoRA recipe's tree)."""
  extra = adapter_shapes(shapes["llm"]["layers"], rank)
  return unflatten({**flatten(shapes), **{"llm/layers/" + k: v for k, v in extra.items()}})


def add_adapters(params: dict, rank: int, seed: int) -> dict:
  """params with fresh adapters (A ~ N(0, 1/in), B = 0) under llm/layers/lora."""
  shapes = adapter_shapes(params["llm"]["layers"], rank)
  rng = np.random.default_rng(seed)
  new = {}
  for key, sd in shapes.items():
    if key.endswith("/b"):
      new[key] = np.zeros(sd.shape, np.float32)
    else:
      fan_in = int(np.prod(sd.shape[1:-1]))
      new[key] = rng.normal(0.0, fan_in ** -0.5, sd.shape).astype(np.float32)
  flat = flatten(params)
  flat.update({"llm/layers/" + k: v for k, v in new.items()})
  return unflatten(flat)


def rank_of(params: dict) -> int | None:
  layers = params.get("llm", {}).get("layers", {})
  if "lora" not in layers:
    return None
  return int(flatten(layers["lora"])["mlp/linear/a"].shape[-1])


def merge_layer(layer: dict, alpha: float = DEFAULT_ALPHA, dtype=None) -> dict:
  """One layer's (or the stacked) params with its adapters folded in, `lora` removed.

  A merged weight keeps its dtype; a quantized one (--quantize) becomes a plain
  array in `dtype` (the compute dtype; f32 if None).
  """
  if "lora" not in layer:
    return layer
  adapters = flatten(layer["lora"])
  flat = {k: v for k, v in flatten(layer).items() if not k.startswith("lora/")}
  for name, (a_ax, b_ax, w_ax) in _SPECS.items():
    if f"{name}/a" not in adapters:
      continue
    a, b = adapters[f"{name}/a"], adapters[f"{name}/b"]
    r = a.shape[-1]
    stacked = a.ndim > len(a_ax)  # A leading depth axis, when merging all layers.
    lead = "l" if stacked else ""
    delta = jnp.einsum(f"{lead}{a_ax},{lead}{b_ax}->{lead}{w_ax}", a, b) * (alpha / r)
    w = flat[name]
    out = (dtype or jnp.float32) if quantize.is_quantized(w) else w.dtype
    flat[name] = (quantize.weight(w, jnp.float32) + delta).astype(out)
  return unflatten(flat)


def merge(params: dict, alpha: float = DEFAULT_ALPHA, dtype=None) -> dict:
  """The full tree with every adapter folded into its weight (see `merge_layer` for `dtype`)."""
  if rank_of(params) is None:
    return params
  llm = dict(params["llm"])
  llm["layers"] = merge_layer(params["llm"]["layers"], alpha, dtype)
  return {**params, "llm": llm}
