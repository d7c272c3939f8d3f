"""Quantized frozen weights (`--quantize int8|int4|nf4`), with qwix's QArray.

Which leaves: the matrices (`_CONTRACTED` below: the vision encoder's
kernels and patch embedding, its projection head, the decoder's einsum
weights) that the training recipe freezes. Norms, biases and the position
embedding stay as stored; trainable leaves (attention, adapters) stay f32.
The token embedding stays as stored too: it is also the output layer, and
the default loss reads the whole vocabulary from it, so a quantized table
would be dequantized whole in every step and kept for the backward pass
(1 GiB in bf16 for the 3B model, more than int8 or int4 saves on it;
BENCHMARKS.md, "Quantized frozen weights").

How: each matrix becomes a `qwix.QArray` when it is loaded (the `put` hook of
`checkpoint.load_params`, one leaf at a time, so the half-precision tree and
the quantized one never coexist), on the host CPU, so a re-validation gets
the same integers bit for bit on any machine. Symmetric absmax scales, f32:
one per output channel (int8), or one per tile of consecutive inputs along
the last contracted axis (int4: 128, NF4: 64, QLoRA's block; the smallest
divisor of the axis not below that). The depth axis of stacked layers is
always a channel axis, so `nn.scan` and `Gemma.hidden_at` slice the scales
with the values.

Use: the model dequantizes a weight where an einsum reads it (`weight`),
inside the jitted step, one layer at a time, so XLA can fuse the conversion
into its consumer (qwix's own `einsum` does the same for a float operand:
it dequantizes first).

Why not qwix's model-level API (`qwix.quantize_model` with `PtqProvider`, or
`LoraProvider` for QLoRA): it finds a weight by looking for the einsum's
operand among the params of the module that calls the einsum. Here (big_vision's
layout) the decoder's attention weights belong to a child `_Weight` module,
so they are never found and stay unquantized; the fused weights are sliced
first (`w[0]`, `w[1:]`), and a slice is traced back to its parameter, which
is then replaced by the quantized slice (half the fused MLP weight, silently);
the patch-embedding convolution is refused without activation quantization;
and the training path slices the stacked layers by hand and folds LoRA into
the weights, outside Flax's interception. `tests/test_quantize.py` checks the
first two findings against the installed qwix.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import re
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from palijudge import params as params_lib
from palijudge.errors import UserError
from palijudge.configs import QUANTIZE_MODES as MODES  # noqa: F401

SCALE_DTYPE = jnp.float32
_CHUNK = 1 << 24  # Elements quantized at once (bounds the host's temporaries).


def _qwix():
  """qwix, imported on first use: it imports flax.nnx and so optax, which a plain load
  (and the layering test) keeps out. It is the `quantize` extra: `make setup` installs it;
  an image whose jax is too old for it (qwix needs flax >= 0.12) runs without --quantize."""
  try:
    import qwix
  except ImportError as e:
    raise UserError(f"--quantize needs the qwix library ({e}): pip install "
                    f"'palijudge[quantize]' (make setup installs it)") from None
  return qwix


def _qwix_version() -> str:
  _qwix()  # One message when the library is missing.
  return importlib.metadata.version("qwix")


@dataclasses.dataclass(frozen=True)
class Scheme:
  """How one mode quantizes: qwix's qtype and the sub-channel tile (None: per channel)."""
  mode: str
  qtype: Any
  tile: int | None


_SCHEMES = {"int8": Scheme("int8", jnp.int8, None), "int4": Scheme("int4", jnp.int4, 128),
            "nf4": Scheme("nf4", "nf4", 64)}

# Matrix leaf -> the axes its einsum contracts (stacked leaves count the depth axis 0).
_CONTRACTED = {
    r"img/embedding/kernel": (0, 1, 2),
    r"img/Transformer/encoderblock/MultiHeadDotProductAttention_0/(query|key|value)/kernel": (1,),
    r"img/Transformer/encoderblock/MultiHeadDotProductAttention_0/out/kernel": (1, 2),
    r"img/Transformer/encoderblock/MlpBlock_0/Dense_[01]/kernel": (1,),
    r"img/head/kernel": (0,),
    r"llm/layers/attn/q_einsum/w": (2,),
    r"llm/layers/attn/(kv|qkv)_einsum/w": (3,),
    r"llm/layers/attn/attn_vec_einsum/w": (1, 2),
    r"llm/layers/mlp/gating_einsum": (2,),
    r"llm/layers/mlp/linear": (1,),
}


def scheme(mode: str | None) -> Scheme | None:
  """The scheme of a `--quantize` value (None for none)."""
  if mode is None or mode == "none":
    return None
  if mode not in _SCHEMES:
    raise UserError(f"--quantize must be one of {', '.join(MODES)}, got {mode!r}")
  return _SCHEMES[mode]


def contracted(name: str) -> tuple[int, ...] | None:
  """The contracted axes of a matrix leaf, None for a leaf that is never quantized."""
  return next((axes for pat, axes in _CONTRACTED.items() if re.fullmatch(pat, name)), None)


def selector(trainable: str) -> Callable[[str], tuple[int, ...] | None]:
  """name -> contracted axes for the matrices `trainable` freezes, else None."""
  pattern = params_lib.trainable_pattern(trainable)
  return lambda name: None if pattern.search(name) else contracted(name)


def _tile(size: int, target: int) -> int:
  return next(d for d in range(min(target, size), size + 1) if size % d == 0)


def _how(shape: tuple[int, ...], axes: tuple[int, ...], s: Scheme) -> dict:
  """`_quantize`'s static arguments for a leaf of `shape` contracting `axes`."""
  channels = tuple(a for a in range(len(shape)) if a not in axes)
  tiled = ((axes[-1], _tile(shape[axes[-1]], s.tile)),) if s.tile else ()
  return dict(channels=channels, tiled=tiled, qtype=s.qtype)


@functools.partial(jax.jit, static_argnames=("channels", "tiled", "qtype"))
def _quantize(x, channels: tuple, tiled: tuple, qtype) -> qwix.QArray:
  return _qwix().quantize(x.astype(jnp.float32), qtype, channelwise_axes=channels,
                          tiled_axes=dict(tiled) or None, scale_dtype=SCALE_DTYPE)


def quantize_array(a, axes: tuple[int, ...], s: Scheme) -> qwix.QArray:
  """One leaf as a QArray of host (numpy) arrays, quantized in slices of whole channels.

  Every scale covers whole channels or tiles, so slicing along a channel axis
  (axis 0, the depth of stacked layers) gives the same integers as quantizing
  the whole leaf at once; the slices are written into the result in place, so
  the host holds the leaf, one slice's temporaries and the result. Host
  arrays, because `jax.device_put` of one gives the device's default layout,
  which a compiled step expects (the CPU computation's own 4-bit output may
  be laid out otherwise).
  """
  a = np.asarray(a)
  how = _how(a.shape, axes, s)
  n = a.shape[0] if 0 in how["channels"] else 1
  step = n if n == 1 else max(1, min(n, _CHUNK // max(1, a[0].size)))
  out = None
  with jax.default_device(jax.devices("cpu")[0]):
    if step >= n:  # In one piece.
      return jax.tree.map(np.asarray, _quantize(a, **how))
    for i in range(0, n, step):
      part = _quantize(a[i:i + step], **how)
      if out is None:  # Shapes along axis 0 scale with the slice: the leaf's, in full.
        out = jax.tree.map(lambda x: np.empty((n, *x.shape[1:]), x.dtype), part)
      for whole, piece in zip(jax.tree.leaves(out), jax.tree.leaves(part)):
        whole[i:i + step] = np.asarray(piece)
  return out


def loading_put(quant: dict | None, put: Callable[[str, Any], Any]
                ) -> Callable[[str, Any], Any]:
  """The `put` hook of `checkpoint.load_params` that quantizes each frozen matrix first.

  `quant`: `describe`'s dict (None: `put` itself).
  """
  if quant is None:
    return put
  s, axes_of = scheme(quant["mode"]), selector(quant["trainable"])

  def quantizing_put(name: str, a):
    axes = axes_of(name)
    return put(name, a if axes is None else quantize_array(a, axes, s))
  return quantizing_put


def abstract(shapes, quant: dict | None):
  """The tree of ShapeDtypeStructs as `quant` loads it (QArrays of them), for planning."""
  if quant is None:
    return shapes
  s, axes_of = scheme(quant["mode"]), selector(quant["trainable"])
  out = {}
  for name, sd in params_lib.flatten(shapes).items():
    axes = axes_of(name)
    if axes is None:
      out[name] = sd
      continue
    out[name] = jax.eval_shape(functools.partial(_quantize, **_how(tuple(sd.shape), axes, s)),
                               sd)
  return params_lib.unflatten(out)


def frozen_matrices(names, trainable: str) -> list[str]:
  """The names among `names` that a quantized load with recipe `trainable` quantizes."""
  axes_of = selector(trainable)
  return [n for n in names if axes_of(n) is not None]


# --- In the model: dequantize where a weight is read --------------------------

def is_quantized(x) -> bool:
  qwix = sys.modules.get("qwix")  # No QArray exists before qwix is imported.
  return qwix is not None and isinstance(x, qwix.QArray)


def weight(w, dtype):
  """A weight in `dtype`, dequantized first if it is a QArray."""
  return (_qwix().dequantize(w) if is_quantized(w) else w).astype(dtype)


# --- What a checkpoint records, and loading it again -----------------------------

def describe(mode: str | None, trainable: str) -> dict | None:
  """The quantization of a load (None: none), as a checkpoint's meta records it.

  `trainable` is the set whose matrices stay unquantized: the recipe's at
  training time, carried by the checkpoint so that re-validation quantizes
  exactly the leaves that training did.
  """
  s = scheme(mode)
  if s is None:
    return None
  return {"mode": s.mode, "tile": s.tile, "scale": jnp.dtype(SCALE_DTYPE).name,
          "trainable": trainable, "qwix": _qwix_version()}


def for_checkpoint(meta: dict, mode: str | None, trainable: str, where_: str) -> dict | None:
  """The quantization to load a checkpoint with (`mode` None: as it records, else none).

  A base (no recorded quantization, not a delta) is quantized as asked. A
  delta's trained leaves were fitted to its base as quantized then: it loads
  as recorded, and another `--quantize`, or a scheme this version does not
  reproduce, is refused.
  """
  recorded = meta.get("quantize")
  if recorded is None and not meta.get("delta"):
    return describe(mode, trainable)
  saved = None if recorded is None else _reproducible(recorded, where_)
  was = saved["mode"] if saved else "none"
  if mode is not None and mode != was:
    over = f"{was} frozen weights (--quantize {was})" if saved else "unquantized weights"
    raise UserError(f"{where_}: trained over {over}; --quantize {mode} would change the model "
                    f"it was fitted to")
  return saved


def _reproducible(recorded: Any, where_: str) -> dict:
  """A checkpoint's recorded quantization, if this version quantizes the same way."""
  saved = None
  if isinstance(recorded, dict) and recorded.get("mode") in _SCHEMES:
    trainable = recorded.get("trainable")
    try:
      ok = isinstance(trainable, str) and params_lib.trainable_pattern(trainable) is not None
    except re.error:
      ok = False
    saved = describe(recorded["mode"], trainable) if ok else None
  if saved is None or any(recorded.get(k) != v for k, v in saved.items() if k != "qwix"):
    raise UserError(f"{where_}: records a quantization this palijudge does not reproduce "
                    f"({recorded}); train it again, or judge it with the version that saved it")
  return saved


def check_trainable(params, trainable: str, quant: dict | None) -> None:
  """Refuses a recipe that would train a leaf this model holds quantized."""
  pattern = params_lib.trainable_pattern(trainable)
  hit = next((n for n, v in params_lib.flatten(params).items()
              if is_quantized(v) and pattern.search(n)), None)
  if hit:
    raise UserError(f"--trainable {trainable} trains {hit}, which this model holds quantized "
                    f"(--quantize {quant['mode']} for --trainable {quant['trainable']}); train "
                    f"it with --trainable {quant['trainable']}, or without --quantize")


def check_full_save(quant: dict | None, what: str = "--full") -> None:
  """A full checkpoint holds every weight in float; a quantized model's frozen ones are not."""
  if quant is not None:
    raise UserError(f"{what}: this model's frozen weights are quantized (--quantize "
                    f"{quant['mode']}), and a full checkpoint holds float weights; keep the "
                    f"delta checkpoint, or train without --quantize")


def id_suffix(quant: dict | None) -> str:
  """What a quantization adds to a model's identity (feature cache, train state, probes).

  The recipe's set is left out: every named set but `all` (refused) freezes
  the whole encoder, and the train state records the recipe itself.
  """
  return "" if quant is None else f"+{quant['mode']}/{quant['tile']}"
