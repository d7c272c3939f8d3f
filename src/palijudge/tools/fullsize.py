"""Full size without the real weights: random Kaggle-layout checkpoints, phase timing.

Why: the real PaliGemma weights are a licensed multi-GB download
(`paligemma-3b-pt-224.f16.npz` is 5.85 GB). Speed and memory depend on the
shapes and dtypes of the parameters, not on their values, so a machine without
the real files (a rented GPU, CI) can still run the real workflow at full
size: load, compile, evaluate, train, evaluate, save.

`write_random_checkpoint` writes such a file in the official layout (one
`params/<slash/path>` array per parameter, float16 by default) from the
project's own parameter shapes (`model.paligemma.param_shapes`). It streams:
each array is generated, written through `checkpoint.write_npz` and dropped
before the next one, so host memory stays at about one array (for the 3B
model the largest is the stacked MLP gating weight, 18 x 2 x 2048 x 16384,
2.4 GB in float16; writing the whole 5.85 GB file peaked at 2.6 GB resident,
in about 80 s on one core). Arrays are filled in chunks, so no float32 copy
of a whole array exists either. Values are seeded per array
(seed, key), so a file is reproducible whatever order it is read in, and
scaled like a sane init so a forward pass stays finite (`init_kind`). Beside
the parameters the file carries only `palijudge/meta`, which marks it as
random; big_vision's loader reads `params/` alone.

The phase timer that measures a whole iteration on such a checkpoint is
`phases.Phases` (`03-do_learn.py --phases`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
import zlib
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

from palijudge.errors import UserError

INIT_STD = 0.02
CHUNK = 1 << 22  # Elements generated at a time (16 MB of float32).
DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float32": np.dtype(np.float32)}
_SUFFIX = {"float16": "f16", "bfloat16": "b16", "float32": "f32"}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One array of a checkpoint: archive key (without .npy), shape, dtype."""
  key: str
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def nbytes(self) -> int:
    return self.size * self.dtype.itemsize


def init_kind(name: str) -> str:
  """How a parameter is filled: "zeros", "ones" or "normal" (std INIT_STD).

  Biases are 0. Norm gains are 1: the ViT's LayerNorm stores the gain itself
  (scale 1), Gemma's RMSNorm stores gain - 1 (scale 0). LoRA `b` is 0 (the
  adapter starts as a no-op). Every other array, weights and embeddings, is
  normal(0, 0.02), which keeps activations of the 3B models finite.
  """
  if name.endswith("/bias") or (name.endswith("/b") and "/lora/" in name):
    return "zeros"
  if name.endswith("/scale"):
    return "ones" if name.startswith("img/") else "zeros"
  return "normal"


def dtype_of(name: str) -> np.dtype:
  if name not in DTYPES:
    raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
  return DTYPES[name]


def default_filename(model: str, dtype: str = "float16") -> str:
  """`paligemma-3b-pt-224.f16.npz`: the Kaggle name, which `--model FILE` resolves."""
  dtype_of(dtype)
  return f"{model}.{_SUFFIX[dtype]}.npz"


def entries(cfg, dtype: str = "float16") -> Iterator[Entry]:
  """The arrays `write_random_checkpoint` writes, in order, without writing (a dry run)."""
  from palijudge.model import paligemma as model_lib
  from palijudge.params import flatten
  dt = dtype_of(dtype)
  for name, sd in sorted(flatten(model_lib.param_shapes(cfg)).items()):
    yield Entry("params/" + name, tuple(int(d) for d in sd.shape), dt)


def random_array(entry: Entry, seed: int, chunk: int | None = None) -> np.ndarray:
  """The array of `entry`, filled `chunk` (default CHUNK) elements at a time; see `init_kind`."""
  name = entry.key.removeprefix("params/")
  kind = init_kind(name)
  if kind != "normal":
    return (np.zeros if kind == "zeros" else np.ones)(entry.shape, entry.dtype)
  out = np.empty(entry.shape, entry.dtype)
  flat = out.reshape(-1)
  rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
  chunk = chunk or CHUNK
  for start in range(0, flat.size, chunk):
    stop = min(start + chunk, flat.size)
    values = rng.standard_normal(stop - start, dtype=np.float32)
    values *= INIT_STD
    flat[start:stop] = values.astype(entry.dtype)
  return out


class _Handover:
  """An array that `np.asarray` takes exactly once, keeping no reference itself.

  A writer's loop variable (`for key, a in arrays`) still holds the previous
  item while the generator makes the next one; holding this wrapper instead
  of the array keeps one array alive at a time, not two.
  """

  def __init__(self, array: np.ndarray):
    self._array = array

  def __array__(self, dtype=None, copy=None):
    array, self._array = self._array, None
    if array is None:
      raise RuntimeError("array already handed over")
    return array if dtype is None else array.astype(dtype, copy=False)


def random_arrays(planned: Iterable[Entry], seed: int) -> Iterator[tuple[str, _Handover]]:
  """(key, array) pairs for `checkpoint.write_npz`, made lazily, one alive at a time."""
  for entry in planned:
    yield entry.key, _Handover(random_array(entry, seed))


def _check_space(path: str, need: int) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  free = shutil.disk_usage(folder).free
  if free < need:
    raise UserError(f"{path}: needs {need / 1e9:.2f} GB free in {folder}, "
                    f"{free / 1e9:.2f} GB are")


def write_random_checkpoint(path: str, cfg, seed: int = 0, dtype: str = "float16",
                            meta: dict | None = None) -> dict:
  """Writes a random checkpoint of `cfg` to `path` atomically; returns a summary."""
  from palijudge import checkpoint
  planned = list(entries(cfg, dtype))
  nbytes = sum(e.nbytes for e in planned)
  _check_space(path, nbytes)
  info = {"random_weights": True, "seed": seed, "dtype": dtype,
          "init": f"normal(0, {INIT_STD}); biases 0; norm gains 1; see tools/fullsize.py"}
  t = time.perf_counter()
  checkpoint.write_npz(path, random_arrays(planned, seed), {**info, **(meta or {})})
  return {"path": path, "arrays": len(planned), "params": sum(e.size for e in planned),
          "bytes": os.path.getsize(path), "largest_array_bytes": max(e.nbytes for e in planned),
          "seconds": round(time.perf_counter() - t, 2), **info}


def write_tokenizer(path: str, vocab_size: int) -> str:
  """A small offline-trained tokenizer (the real one is a download too)."""
  from palijudge.data import synthetic
  return str(synthetic.write_tiny_tokenizer(path, min(vocab_size, synthetic.TINY_VOCAB)))
