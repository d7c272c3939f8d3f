"""palijudge.model.features: the frozen-encoder cache (keys, memory and disk hits, damage)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil

import numpy as np
import pytest

from palijudge import checkpoint, loader
from palijudge import train as fit
from palijudge import params as params_lib
from palijudge.data.batch import Batches
from palijudge.data.examples import DEFAULT_PROMPT
from palijudge.model.features import FeatureCache
from palijudge.configs import EvalConfig

ECFG = EvalConfig(prompt=DEFAULT_PROMPT)  # train.fit's prompt and GIF frame.

BS = 4  # One batch shape for every pass: the encoder compiles once.


def test_feature_cache_keys_follow_content_weights_and_frames(tiny_lm, tiny_examples, tmp_path):
  lm, (examples, _, _) = tiny_lm, tiny_examples
  ex = examples[0]
  copy = tmp_path / "renamed.png"
  copy.write_bytes(pathlib.Path(ex.image).read_bytes())
  moved = dataclasses.replace(ex, image=str(copy))
  cache = loader.feature_cache(lm, "attn", "first")
  assert cache._key(ex) == cache._key(moved)  # Same bytes, same features.
  assert cache._key(ex) != cache._key(examples[1])
  assert loader.feature_cache(lm, "attn", "last")._key(ex) != cache._key(ex)
  assert loader.feature_cache(lm, "all", "first") is None  # Training changes the encoder.
  # Other weights (one leaf changed; the tokenizer as is), loaded as a user would.
  other = tmp_path / "other"
  flat = params_lib.flatten(lm.params)
  flat["img/head/bias"] = np.asarray(flat["img/head/bias"]) + 1
  checkpoint.save(loader.weights_file("tiny", str(other)), params_lib.unflatten(flat), lm.cfg)
  shutil.copy(lm.spec.tokenizer, loader.tokenizer_file("tiny", str(other)))
  lm2 = loader.load(loader.resolve("tiny", cache_dir=str(other)), trainable="attn")
  assert loader.feature_cache(lm2, "attn", "first")._key(ex) != cache._key(ex)


def _cache(lm, disk=None) -> FeatureCache:
  return FeatureCache(lm.model, lm.params["img"], "weights-under-test", "first",
                      None if disk is None else str(disk))


def _attach(cache: FeatureCache, lm, examples) -> np.ndarray:
  """The image tokens the cache attaches to `examples`, one row per example."""
  rows = []
  for chunk, batch in Batches(examples, lm.tok, lm.cfg.image_size, BS, DEFAULT_PROMPT,
                              with_suffix=False):
    out = cache.attach(chunk, batch)
    assert out.image is None
    assert out.zimg.shape == (BS, lm.cfg.num_patches, lm.cfg.llm.width)
    rows.append(np.asarray(out.zimg[:len(chunk)]))
  return np.concatenate(rows)


@pytest.fixture(scope="module")
def six(tiny_examples):
  """Six examples: a full batch and a short one (padded to BS)."""
  return tiny_examples[0][:6]


@pytest.fixture(scope="module")
def reference(tiny_lm, six):
  """Their image tokens, computed without any cache entry."""
  return _attach(_cache(tiny_lm), tiny_lm, six)


def test_second_pass_hits_in_memory(tiny_lm, six, reference):
  cache = _cache(tiny_lm)
  first = _attach(cache, tiny_lm, six)
  assert (cache.misses, cache.hits) == (6, 0)  # Pad rows are not counted.
  np.testing.assert_array_equal(first, reference)
  assert np.abs(first[0] - first[1]).max() > 0  # Different images, different tokens.
  again = _attach(cache, tiny_lm, six[::-1])  # Rows follow the examples, not the order seen.
  assert (cache.misses, cache.hits) == (6, 6)
  np.testing.assert_array_equal(again, first[::-1])


def test_a_copied_image_hits(tiny_lm, six, reference, tmp_path):
  cache = _cache(tiny_lm)
  _attach(cache, tiny_lm, six[:1])
  copy = tmp_path / "another-name.png"
  copy.write_bytes(pathlib.Path(six[0].image).read_bytes())
  moved = dataclasses.replace(six[0], image=str(copy), raw_image="another-name.png")
  z = _attach(cache, tiny_lm, [moved])
  assert (cache.misses, cache.hits) == (1, 1)
  np.testing.assert_array_equal(z[0], reference[0])


def _entries(disk: pathlib.Path) -> list[pathlib.Path]:
  return sorted(disk.rglob("*.npy"))


def test_disk_cache_survives_a_new_instance(tiny_lm, six, reference, tmp_path):
  disk = tmp_path / "features"
  writer = _cache(tiny_lm, disk)
  _attach(writer, tiny_lm, six)
  assert writer.misses == 6 and len(_entries(disk)) == 6
  assert not [p for p in disk.rglob("*") if p.is_file() and p.suffix != ".npy"]  # No temp left.
  reader = _cache(tiny_lm, disk)  # A new run: an empty memory.
  z = _attach(reader, tiny_lm, six)
  assert (reader.misses, reader.hits) == (0, 6)
  np.testing.assert_array_equal(z, reference)


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_damaged_disk_entries_are_recomputed(tiny_lm, six, reference, tmp_path, damage):
  disk = tmp_path / "features"
  _attach(_cache(tiny_lm, disk), tiny_lm, six)
  cache = _cache(tiny_lm, disk)
  bad = [pathlib.Path(cache._disk(cache._key(ex))) for ex in six[1:3]]
  for path in bad:
    good = path.read_bytes()
    path.write_bytes({"empty": b"", "garbage": b"\x00not an npy file\xff" * 10,
                      "truncated": good[:len(good) // 2]}[damage])
  z = _attach(cache, tiny_lm, six)
  assert (cache.misses, cache.hits) == (2, 4)
  np.testing.assert_allclose(z, reference, atol=1e-6, rtol=0)
  for path, row in zip(bad, reference[1:3]):  # Rewritten, whole.
    np.testing.assert_allclose(np.load(path, allow_pickle=False), row, atol=1e-6, rtol=0)
  assert len(_entries(disk)) == 6 and all(os.path.getsize(p) > 0 for p in _entries(disk))


def test_pooled_embeddings_are_mean_tokens_and_hit_the_cache(tiny_lm, tiny_examples, tmp_path):
  lm, (examples, _, _) = tiny_lm, tiny_examples
  cache = FeatureCache(lm.model, lm.params["img"], lm.spec.weights_id, "first", str(tmp_path))
  some = list(examples[:5])
  pooled = cache.pooled(some, lm.cfg.image_size, batch_size=BS)
  assert pooled.shape == (5, lm.cfg.llm.width) and pooled.dtype == np.float32
  assert (cache.hits, cache.misses) == (0, 5)
  # The same tokens as the training path computes, averaged.
  ref = [np.asarray(z, np.float32).mean(0) for z in cache.tokens(some, lm.cfg.image_size, BS)]
  np.testing.assert_allclose(pooled, np.stack(ref), rtol=1e-6)
  assert cache.hits == 5  # Second pass: every image from memory.
  fresh = FeatureCache(lm.model, lm.params["img"], lm.spec.weights_id, "first", str(tmp_path))
  np.testing.assert_allclose(fresh.pooled(some, lm.cfg.image_size, BS), pooled, rtol=1e-6)
  assert (fresh.hits, fresh.misses) == (5, 0)  # And from disk in a new process's cache.
  assert cache.pooled([], lm.cfg.image_size).shape == (0, lm.cfg.llm.width)


def test_each_image_is_hashed_once_per_run_not_per_step(tiny_lm, tiny_examples, tmp_path,
                                                        monkeypatch):
  """Training on 3 epochs of the set reads each image's bytes for its key once; a later
  cache (the next fold or trial) re-hashes only a file whose size or mtime changed."""
  from palijudge.model import features as features_lib
  hashed = []
  real = features_lib.files.sha256
  monkeypatch.setattr(features_lib.files, "sha256", lambda p: hashed.append(p) or real(p))
  monkeypatch.setattr(features_lib, "_DIGESTS", {})
  tr = [dataclasses.replace(e, image=shutil.copy(e.image, tmp_path)) for e in tiny_examples[1]]
  cache = _cache(tiny_lm)
  tcfg = fit.TrainConfig(steps=3 * len(tr) // 2, batch_size=2)
  fit.fit(tiny_lm, tr, tcfg, ECFG, log=lambda _: None,
          features=cache)
  assert sorted(hashed) == sorted({e.image for e in tr})
  hashed.clear()
  os.utime(tr[0].image, ns=(1, 1))  # Touched: another modification time.
  _attach(_cache(tiny_lm), tiny_lm, tr)
  assert hashed == [tr[0].image]
