"""big_vision-compatible `.npz` checkpoints.

Layout: a flat, uncompressed `np.savez` archive, one array per parameter,
keyed `params/<slash/joined/path>` (the Kaggle `paligemma-3b-pt-224.f16.npz`
layout; keys without the `params/` prefix load too). Besides the parameters,
files written here carry `palijudge/config` (the model config JSON) and
`palijudge/meta` (provenance JSON) as uint8 arrays; big_vision's loader only
reads `params/`, so the files load back there unchanged.

Loading fills a tree built by `jax.eval_shape` one array at a time: the host
never holds a second full copy, and each leaf is cast to the dtype its
`dtypes` entry asks for as it is read. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import jax
import ml_dtypes
import numpy as np

from palijudge.model import config as config_lib
from palijudge import files
from palijudge.params import Params, flatten, unflatten
from palijudge.errors import UserError, where

CONFIG_KEY = "palijudge/config"
META_KEY = "palijudge/meta"


def _restore_dtype(a: np.ndarray) -> np.ndarray:
  # bfloat16 arrays come back from np.savez as 2-byte void ('V2').
  if a.dtype.kind == "V" and a.dtype.itemsize == 2:
    return a.view(ml_dtypes.bfloat16)
  return a


def _reason(e: Exception) -> str:
  """numpy's error in our words: its advice to load pickled data "unsafely" is never shown."""
  text = str(e).strip()
  if "contains pickled" in text:  # Neither a zip nor an .npy: numpy would try pickle next.
    return "not a numpy archive; pickled data is never loaded"
  if "max_header_size" in text:  # Before "pickle": numpy's advice here also names it.
    return "an array header too large for a checkpoint"
  if "pickle" in text:
    return "it holds Python objects (pickled data), which are never loaded"
  return text.splitlines()[0] if text else "empty"


def _open(path) -> np.lib.npyio.NpzFile:
  if not os.path.exists(path):
    raise UserError(f"{where(path)}: checkpoint not found")
  try:
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{where(path)}: not a readable .npz checkpoint ({_reason(e)})") from None
  if not isinstance(npz, np.lib.npyio.NpzFile):  # A .npy file named .npz.
    raise UserError(f"{where(path)}: not an .npz archive (a single array?)")
  return npz


def _json_entry(npz, key: str, path) -> Any:
  """A JSON side entry (config, meta): a uint8 array of UTF-8 text, checked as untrusted."""
  a = _read_member(npz, key, path)
  try:
    if a.dtype != np.uint8:
      raise ValueError(f"dtype {a.dtype}")
    return json.loads(a.tobytes().decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{where(path)}: unreadable {key} ({e})") from None


def _key_index(npz) -> dict[str, str]:
  """Maps parameter path -> archive key, accepting keys with or without `params/`."""
  index = {}
  for key in npz.files:
    if key.startswith("palijudge/"):
      continue
    index[key[len("params/"):] if key.startswith("params/") else key] = key
  return index


def _shape_error(path, name: str, got: tuple, want: tuple) -> str:
  if name == "img/pos_embedding" and len(got) == 3 and len(want) == 3:
    side = lambda n: int(round(n ** 0.5))
    return (f"{where(path)}: saved for {got[1]} image tokens ({side(got[1])}x{side(got[1])} "
            f"patches), the model has {want[1]} ({side(want[1])}x{side(want[1])}): this "
            f"checkpoint is for another image size")
  return (f"{where(path)}: {name} has shape {got}, the model expects {want} "
          f"(wrong --model?)")


def _read_member(npz, key: str, path) -> np.ndarray:
  try:
    return npz[key]
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # Object arrays too.
    raise UserError(f"{where(path)}: cannot read {key}: {_reason(e)}") from None


def read_arrays(path, keys) -> Iterator[np.ndarray]:
  """The arrays stored under `keys`, one at a time; a missing or unreadable one is a UserError."""
  with _open(path) as npz:
    for key in keys:
      if key not in npz.files:
        raise UserError(f"{where(path)}: {key} is missing")
      yield _read_member(npz, key, path)


def param_names(path) -> list[str]:
  with _open(path) as npz:
    return list(_key_index(npz))


def read_config(path) -> config_lib.ModelConfig | None:
  """The model config stored in a palijudge checkpoint, or None (e.g. Kaggle's)."""
  with _open(path) as npz:
    if CONFIG_KEY not in npz.files:
      return None
    raw = _json_entry(npz, CONFIG_KEY, path)
  return config_lib.from_dict(raw, f"{where(path)} (stored config)")


def read_meta(path) -> dict:
  with _open(path) as npz:
    if META_KEY not in npz.files:
      return {}
    meta = _json_entry(npz, META_KEY, path)
  if not isinstance(meta, dict):
    raise UserError(f"{where(path)}: unreadable {META_KEY} (not a JSON object)")
  return meta


def load_params(path, shapes: Params, dtype_for: Callable[[str], Any],
                put: Callable[[str, np.ndarray], Any] = lambda _, a: a,
                subset: Callable[[str], bool] | None = None) -> Params:
  """Loads `path` into the tree `shapes` (ShapeDtypeStructs from eval_shape).

  dtype_for(name) gives each leaf's target dtype (None: keep the stored one); `put(name, array)` places it
  (e.g. `jax.device_put` with a sharding) before the next array is read.
  `subset`, if given, restricts which leaves must be present (delta files).
  Missing, unexpected or mis-shaped keys raise one UserError listing them.
  """
  want = flatten(shapes)
  if subset is not None:
    want = {k: v for k, v in want.items() if subset(k)}
  out = {}
  with _open(path) as npz:
    index = _key_index(npz)
    missing = sorted(set(want) - set(index))
    if missing:
      raise UserError(f"{where(path)}: missing {len(missing)} parameter(s), e.g. "
                      f"{', '.join(missing[:3])} (is this checkpoint for another model?)")
    for name, sd in want.items():
      a = _read_member(npz, index[name], path)
      if tuple(a.shape) != tuple(sd.shape):
        raise UserError(_shape_error(path, name, tuple(a.shape), tuple(sd.shape)))
      a = _restore_dtype(a)
      out[name] = put(name, a.astype(dtype_for(name) or a.dtype, copy=False))
      del a
    extra = sorted(set(index) - set(want)) if subset is None else []
    if extra:
      raise UserError(f"{where(path)}: {len(extra)} unexpected parameter(s), e.g. "
                      f"{', '.join(extra[:3])}")
  return unflatten(out)


def _json_array(obj) -> np.ndarray:
  return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def write_npz(path, arrays, meta: dict | None = None) -> None:
  """Atomic, uncompressed .npz (temp file + rename) from (key, array) pairs.

  `arrays` may be a generator: each array is written, then dropped, so device
  leaves are fetched one at a time. `meta` is stored as JSON under META_KEY.
  """
  with files.atomic_open(path, "wb") as out:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
      for key, a in arrays:
        with zf.open(key + ".npy", "w", force_zip64=True) as f:
          np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)
      if meta is not None:
        with zf.open(META_KEY + ".npy", "w") as f:
          np.lib.format.write_array(f, _json_array(meta), allow_pickle=False)


def save(path, params: Params, cfg: config_lib.ModelConfig | None, meta: dict | None = None,
         dtype=None) -> None:
  """Writes params (optionally cast to `dtype`) with config and meta, atomically."""
  def arrays():
    for name, leaf in flatten(params).items():
      a = np.asarray(jax.device_get(leaf))
      yield "params/" + name, a if dtype is None else a.astype(dtype)
    if cfg is not None:
      yield CONFIG_KEY, _json_array(cfg.to_dict())
  write_npz(path, arrays(), meta or {})


def save_delta(path, params: Params, keep, cfg: config_lib.ModelConfig, base: str,
               meta: dict, cache_dir: str | None = None) -> None:
  """Only the leaves `keep(name)` selects, plus what identifies the base checkpoint.

  The base is recorded by absolute path, by sha256 and, when it lies in the
  project's `cache_dir`, by its path inside it (`base_in_cache`): a delta
  trained in the container (/workspace/palijudge/cache/...) then finds its
  base in the host's cache/ without --base (see `recorded_base`).
  """
  flat = {k: v for k, v in flatten(params).items() if keep(k)}
  delta_meta = dict(meta, delta=True, base=os.path.abspath(base),
                    base_sha256=files.sha256_remembered(base))
  if cache_dir and files.is_within(base, cache_dir):
    delta_meta["base_in_cache"] = Path(os.path.relpath(os.path.abspath(base),
                                                       os.path.abspath(cache_dir))).as_posix()
  save(path, unflatten(flat), cfg, delta_meta)


def recorded_base(delta_path, cache_dir: str | None) -> str | None:
  """Where a delta's base is: the recorded path if it exists, else the same file in `cache_dir`."""
  meta = read_meta(delta_path)
  recorded = meta.get("base") if isinstance(meta.get("base"), str) else None
  if recorded and os.path.exists(recorded):
    return recorded
  inside = meta.get("base_in_cache")
  candidates = [inside] if isinstance(inside, str) else []
  if recorded:  # Older files: the base's name alone, looked up in this cache/.
    candidates.append(PurePosixPath(recorded.replace("\\", "/")).name)
  for rel in candidates:
    path = os.path.join(cache_dir, *PurePosixPath(rel).parts) if cache_dir else None
    if path and files.is_within(path, cache_dir) and os.path.isfile(path):
      return path
  return recorded


def is_delta(path) -> bool:
  return bool(read_meta(path).get("delta"))


def verify_base(delta_path, base_path) -> None:
  want = read_meta(delta_path).get("base_sha256")
  if not base_path or not os.path.exists(base_path):
    raise UserError(f"{where(delta_path)}: its base checkpoint {base_path} is missing "
                    f"(pass --base FILE)")
  if want and files.sha256_remembered(base_path) != want:
    raise UserError(f"{where(delta_path)}: base checkpoint {base_path} is not the one it was "
                    f"trained from (sha256 differs)")


def stored_threshold(path) -> float | None:
  """The decision threshold saved with a checkpoint (meta "threshold"), if any."""
  if not path or not os.fspath(path).endswith(".npz") or not os.path.isfile(path):
    return None
  value = read_meta(path).get("threshold")
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
  return float(value) if ok else None
