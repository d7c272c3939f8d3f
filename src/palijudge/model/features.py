"""Frozen-encoder feature cache: image tokens computed once per image.

When the vision encoder and its projection are frozen, an image's tokens
`zimg` (P, D) depend only on the image, the model weights and the
preprocessing. They are kept in memory and, when the model came from a
project, on disk under `cache/features/`, keyed by all three, and reused across steps, epochs,
seeds, folds, trials and runs. Images are keyed by their bytes, weights by
their files' sha256 and quantization (`loader.LoadedModel.weights_id`). Training with
`--trainable all` changes the encoder, so no cache is used then.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np

from palijudge.data.batch import Batch, load_pixels
from palijudge.data.examples import Example
from palijudge.errors import UserError
from palijudge.model.paligemma import PaliGemma
from palijudge import files, progress
from palijudge import params as params_lib

# sha256 of image files by (absolute path, size, mtime): caches made later in this process
# (folds, trials) re-hash no unchanged file.
_DIGESTS: dict[tuple[str, int, int], str] = {}


@functools.partial(jax.jit, static_argnums=0)
def _embed_jit(model: PaliGemma, img_params, image_BxSxSx3):
  return model.apply({"params": {"img": img_params}}, image_BxSxSx3,
                     method=PaliGemma.embed_image)


def _embed(model: PaliGemma, img_params, image_BxSxSx3) -> np.ndarray:
  """Image tokens, the images split over the devices the encoder lies on (rows as given)."""
  n = len(image_BxSxSx3)
  image = params_lib.shard_rows(image_BxSxSx3, params_lib.mesh_of(img_params))
  return np.asarray(_embed_jit(model, img_params, image))[:n]


class FeatureCache:
  """zimg per image for one frozen encoder (identified by `weights_id`)."""

  def __init__(self, model: PaliGemma, img_params, weights_id: str, gif_frame: str,
               disk_dir: str | None = None):
    self.model, self.img_params = model, img_params
    self.gif_frame = gif_frame
    self.memory: dict[str, np.ndarray] = {}
    self.hits = self.misses = 0
    self.keys: dict[str, str] = {}  # Image path -> key, for this cache's lifetime.
    self.disk_dir = disk_dir  # None: memory only.
    self.model_key = files.sha256_text(json.dumps(
        [model.cfg.to_dict(), str(model.dtype), weights_id]))[:16]

  def _key(self, ex: Example) -> str:
    """The image's entry, its bytes hashed once per file for this cache's lifetime (a run):
    every later step, epoch and evaluation looks the key up by path, touching no disk."""
    key = self.keys.get(ex.image)
    if key is None:
      key = self.keys[ex.image] = self._content_key(ex.image)
    return key

  def _content_key(self, image: str) -> str:
    """By content; a file seen before in this process with the same path, size and
    modification time is not read again."""
    st = os.stat(image)
    stamp = (os.path.abspath(image), st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(stamp) or files.sha256(image)
    _DIGESTS[stamp] = digest
    return files.sha256_text(f"{self.model_key}|{digest}|{self.gif_frame}")

  def _disk(self, key: str) -> str | None:
    return os.path.join(self.disk_dir, key[:2], key + ".npy") if self.disk_dir else None

  def _lookup(self, key: str) -> np.ndarray | None:
    if key in self.memory:
      return self.memory[key]
    path = self._disk(key)
    if path and os.path.exists(path):
      try:
        self.memory[key] = np.load(path, allow_pickle=False)
        return self.memory[key]
      except (OSError, ValueError, EOFError):
        return None  # A damaged entry is recomputed and rewritten.
    return None

  def _store(self, key: str, z: np.ndarray) -> None:
    self.memory[key] = z
    path = self._disk(key)
    if not path:
      return
    try:
      with files.atomic_open(path, "wb") as f:
        np.save(f, z, allow_pickle=False)
    except UserError:
      pass  # An unwritable cache folder only costs recomputing next time.

  def tokens(self, examples: list[Example], image_size: int, batch_size: int = 8
             ) -> list[np.ndarray]:
    """zimg (P, D) of every example, from the cache where present; images decoded only on a miss."""
    keys = [self._key(ex) for ex in examples]
    found = [self._lookup(k) for k in keys]
    missing = [i for i, z in enumerate(found) if z is None]
    self.hits += len(examples) - len(missing)
    self.misses += len(missing)
    with progress.bar(len(missing), "image embeddings", "img") as bar:
      for start in range(0, len(missing), batch_size):
        rows = missing[start:start + batch_size]
        pixels = np.stack([load_pixels(examples[i], image_size, self.gif_frame) for i in rows])
        pad = batch_size - len(rows)  # One compiled shape for every chunk.
        if pad:
          pixels = np.concatenate([pixels, np.repeat(pixels[:1], pad, axis=0)])
        z = _embed(self.model, self.img_params, pixels)
        for j, i in enumerate(rows):
          found[i] = z[j]
          self._store(keys[i], z[j])
        bar.update(len(rows))
    return found

  def pooled(self, examples: list[Example], image_size: int, batch_size: int = 8
             ) -> np.ndarray:
    """(N, D) float32 image embeddings: each image's tokens averaged (the probe's and the audit's input)."""
    zs = self.tokens(examples, image_size, batch_size)
    if not zs:
      return np.zeros((0, self.model.cfg.llm.width), np.float32)
    return np.stack([np.asarray(z, np.float32).mean(axis=0) for z in zs])

  def attach(self, chunk: list[Example], batch: Batch) -> Batch:
    """The batch with cached image tokens (zimg) in place of its images; computes only misses."""
    keys = [self._key(ex) for ex in chunk]
    found = [self._lookup(k) for k in keys]
    missing = [i for i, z in enumerate(found) if z is None]
    self.hits += len(chunk) - len(missing)
    self.misses += len(missing)
    if missing:
      images = batch.image
      z = _embed(self.model, self.img_params, images)
      for i in missing:
        found[i] = z[i]
        self._store(keys[i], z[i])
    rows = np.stack(found)
    pad = len(batch.text) - len(rows)
    if pad:
      rows = np.concatenate([rows, np.repeat(rows[:1], pad, axis=0)])
    return batch.replace(image=None, zimg=rows)
