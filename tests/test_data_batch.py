"""palijudge.data.batch: collate's padding, the Batch pytree and its model inputs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from palijudge.data import batch as batch_lib
from palijudge.data.batch import Batch, collate
from palijudge.data.examples import DEFAULT_PROMPT
from palijudge.data.tokenizer import DEFAULT_BUCKETS, Tokenizer, bucket_length, tokenize
from palijudge.model.paligemma import Inputs

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
