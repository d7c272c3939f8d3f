"""palijudge.data.batch: collate's padding, the Batch pytree and its model inputs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from palijudge.data import batch as batch_lib
from palijudge.data.batch import Batch, collate
from palijudge.data.examples import DEFAULT_PROMPT
from palijudge.data.tokenizer import DEFAULT_BUCKETS, Tokenizer, bucket_length, tokenize
from palijudge.inputs import Inputs

from testing import FIXTURES

FIELDS = ("text", "mask_ar", "mask_loss", "mask_input", "prefix_len", "label", "loss_idx",
          "loss_w", "example_w", "image", "zimg")


@pytest.fixture(scope="module")
def texts():
  tok = Tokenizer.load(FIXTURES / "paligemma-tiny" / "tokenizer.model")
  return [tokenize(tok, "Is this ad safe?", "yes"), tokenize(tok, DEFAULT_PROMPT, "no"),
          tokenize(tok, "caption en", "the food label shows a warning")]


def _pixels(n: int, size: int = 8) -> np.ndarray:
  return np.random.default_rng(0).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def test_collate_pads_to_buckets_and_to_the_batch_size(texts):
  pixels = _pixels(3)
  b = collate(texts, [True, False, False], pixels, batch_size=4)
  longest = max(len(t) for t in texts)
  seqlen = bucket_length(longest)
  assert seqlen in DEFAULT_BUCKETS and seqlen >= longest
  for name in ("text", "mask_ar", "mask_loss", "mask_input"):
    assert getattr(b, name).shape == (4, seqlen) and getattr(b, name).dtype == np.int32, name
  for i, t in enumerate(texts):
    n = len(t)
    np.testing.assert_array_equal(b.text[i, :n], t.tokens)
    np.testing.assert_array_equal(b.mask_ar[i, :n], t.mask_ar)
    assert b.mask_input[i, :n].all() and not b.mask_input[i, n:].any()
    assert not b.text[i, n:].any() and not b.mask_loss[i, n:].any()
    assert b.prefix_len[i] == t.prefix_len
  # Row 3 only pads the batch: weight 0 (label "no"), a real image under it.
  np.testing.assert_array_equal(b.example_w, [1, 1, 1, 0])
  assert b.example_w.dtype == np.float32
  np.testing.assert_array_equal(b.label, [1, 0, 0, 0])
  assert b.image.shape == (4, 8, 8, 3) and b.zimg is None
  np.testing.assert_array_equal(b.image[:3], pixels)
  # Loss positions: a small bucket wide, each predicting one answer token.
  n_loss = max(int(t.mask_loss.sum()) for t in texts)
  width = bucket_length(n_loss, buckets=batch_lib._LOSS_BUCKETS)
  assert b.loss_idx.shape == b.loss_w.shape == (4, width) and width >= n_loss
  for i, t in enumerate(texts):
    k = int(t.mask_loss.sum())
    assert b.loss_w[i].sum() == k and b.loss_w[i, :k].all()
    answer = t.tokens[t.mask_loss == 1]
    np.testing.assert_array_equal(b.text[i, b.loss_idx[i, :k] + 1], answer)


def test_collate_shapes_and_refusals(texts):
  b = collate(texts, [True, True, False], zimg=np.ones((3, 5, 7), np.float32), batch_size=8,
              shape=(64, 16))
  assert b.text.shape == (8, 64) and b.loss_idx.shape == (8, 16)
  assert b.image is None and b.zimg.shape == (8, 5, 7)
  np.testing.assert_array_equal(b.example_w, [1] * 3 + [0] * 5)
  whole = collate(texts, [True, True, False])  # No batch size: the rows given.
  assert whole.text.shape[0] == 3 and whole.example_w.tolist() == [1, 1, 1]
  with pytest.raises(ValueError):
    collate(texts * 2, [True] * 6, batch_size=4)
  with pytest.raises(ValueError):
    collate([], [], batch_size=4)


def test_batch_is_a_pytree(texts):
  b = collate(texts, [True, False, False], _pixels(3), batch_size=4)
  leaves = jax.tree.leaves(b)
  assert len(leaves) == len(FIELDS) - 1  # zimg is None: no leaf.
  doubled = jax.tree.map(lambda x: x * 2, b)
  assert isinstance(doubled, Batch) and doubled.zimg is None
  for name in FIELDS[:-1]:
    np.testing.assert_array_equal(getattr(doubled, name), getattr(b, name) * 2, err_msg=name)
  leaves, treedef = jax.tree.flatten(b)
  again = jax.tree.unflatten(treedef, leaves)
  assert isinstance(again, Batch) and again.zimg is None and again.image is b.image
  # jit sees its arrays (and only them).
  total = jax.jit(lambda x: x.text.sum() + x.example_w.sum())(b)
  assert int(total) == int(b.text.sum()) + 3


def test_inputs_and_drop_last_shapes(texts):
  b = collate(texts, [True, False, False], _pixels(3), batch_size=4)
  x = b.inputs()
  assert isinstance(x, Inputs)
  assert x.text is b.text and x.mask_ar is b.mask_ar and x.mask_input is b.mask_input
  assert x.image is b.image and x.zimg is None
  t = b.text.shape[1]
  d = x.drop_last()
  assert d.text.shape == d.mask_ar.shape == d.mask_input.shape == (4, t - 1)
  np.testing.assert_array_equal(d.text, b.text[:, :-1])
  np.testing.assert_array_equal(d.mask_input, b.mask_input[:, :-1])
  assert d.image.shape == (4, 8, 8, 3) and d.zimg is None
  assert x.text.shape == (4, t)  # The original is unchanged.
  z = collate(texts, [True] * 3, zimg=np.zeros((3, 5, 7), np.float32), batch_size=4)
  assert z.inputs().drop_last().zimg.shape == (4, 5, 7) and z.inputs().image is None


def test_batches_rows_are_this_process_share_of_every_batch(tiny_lm, tiny_examples):
  """`rows` (a multi-process run): the same rows, padding shape and flips as the whole batch."""
  examples = tiny_examples[1][:12]
  flips = np.arange(12) % 3 == 0
  kw = dict(tok=tiny_lm.tok, image_size=tiny_lm.cfg.image_size, batch_size=4,
            prompt=DEFAULT_PROMPT, with_suffix=True, flips=flips)
  whole = list(batch_lib.Batches(examples, **kw))
  share = list(batch_lib.Batches(examples, rows=slice(2, 4), **kw))
  assert len(share) == len(whole) == 3
  for (chunk, b), (part, p) in zip(whole, share):
    assert part == chunk[2:4]
    for name in ("text", "mask_ar", "mask_loss", "mask_input", "label", "loss_idx", "image"):
      np.testing.assert_array_equal(getattr(p, name), getattr(b, name)[2:4], err_msg=name)


def _eager_stream(examples, steps, batch_size, seed):
  """The stream as it was built before it was lazy: every element, up front."""
  out, epoch = [], 0
  while len(out) < steps * batch_size:
    out.extend(examples[i] for i in batch_lib.epoch_order(len(examples), seed, epoch))
    epoch += 1
  return out[:steps * batch_size]


@pytest.mark.parametrize("n, steps, bs, seed", [(12, 7, 4, 0), (5, 9, 2, 3), (3, 4, 3, 1)])
def test_the_lazy_training_stream_is_the_eager_one(n, steps, bs, seed):
  examples = [f"ex{i}" for i in range(n)]
  stream = batch_lib.training_stream(examples, steps, bs, seed)
  eager = _eager_stream(examples, steps, bs, seed)
  assert len(stream) == len(eager) and list(stream) == eager
  for skip in (0, 1, bs, len(eager) - 1, len(eager)):  # --resume continues from a slice.
    assert list(stream[skip:]) == eager[skip:]
    assert list(stream[skip:][1:3]) == eager[skip:][1:3]
  assert stream[-1] == eager[-1] and stream[::2] == eager[::2]
  flips = np.random.default_rng(seed).random(len(eager)) < 0.5
  for skip in (0, 3):
    lazy = batch_lib.Flips(seed, len(eager), skip)
    assert len(lazy) == len(eager) - skip
    np.testing.assert_array_equal(lazy[0:len(lazy)], flips[skip:])
    np.testing.assert_array_equal(lazy[2:5], flips[skip + 2:skip + 5])


def test_a_huge_stream_costs_nothing_up_front():
  """A huge --steps builds no index list; any element is reachable at once (10**6 steps of 8
  keep the eager list of old, which this would catch, at a bounded 64 MB)."""
  import time
  import tracemalloc
  examples = [f"ex{i}" for i in range(12)]
  tracemalloc.start()
  start = time.perf_counter()
  stream = batch_lib.training_stream(examples, 10 ** 6, 8, 0)
  tail = stream[len(stream) - 5:]
  last = list(tail)
  flips = batch_lib.Flips(0, len(stream), len(stream) - 5)[0:5]
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert len(stream) == 8 * 10 ** 6 and len(last) == 5 and len(flips) == 5
  assert peak < 1 << 20 and time.perf_counter() - start < 5


def test_batches_cut_a_lazy_stream_batch_by_batch(tiny_lm, tiny_examples):
  examples = tiny_examples[1][:6]
  stream = batch_lib.training_stream(examples, 3, 4, 0)
  kw = dict(tok=tiny_lm.tok, image_size=tiny_lm.cfg.image_size, batch_size=4,
            prompt=DEFAULT_PROMPT, with_suffix=True)
  lazy = list(batch_lib.Batches(stream, **kw))
  eager = list(batch_lib.Batches(list(stream), **kw))
  assert len(lazy) == len(eager) == 3
  for (c1, b1), (c2, b2) in zip(lazy, eager):
    assert c1 == c2
    np.testing.assert_array_equal(b1.text, b2.text)
    np.testing.assert_array_equal(b1.image, b2.image)


def test_the_pixel_cache_keeps_frames_and_still_images_apart_and_hits(tmp_path, monkeypatch):
  """PixelCache.frames (animated images, --gif-frame all) and .get (one frame) cache by
  their own keys: a second lookup is a hit, no file is decoded again."""
  from PIL import Image
  from palijudge.data.examples import Example
  path = tmp_path / "a.gif"
  frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
  ex = Example(image=str(path), label=True, prefix="", suffix="yes", source="d.jsonl", line=1,
               raw_image="a.gif")
  loads = []
  for name in ("load_frames", "load_pixels"):
    real = getattr(batch_lib, name)
    monkeypatch.setattr(batch_lib, name, lambda *a, real=real: loads.append(1) or real(*a))
  cache = batch_lib.PixelCache()
  all_frames = cache.frames(ex, 16, 0)
  assert all_frames.shape == (3, 16, 16, 3) and cache.frames(ex, 16, 0) is all_frames
  one = cache.get(ex, 16, "first")
  assert one.shape == (16, 16, 3) and cache.get(ex, 16, "first") is one
  assert len(loads) == 2  # One decode each; the repeats were hits.
  np.testing.assert_array_equal(one, all_frames[0])
