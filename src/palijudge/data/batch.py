"""From examples to device-ready batches.

`collate` turns tokenized texts (and images or cached image embeddings) into
the typed `Batch` every jitted function here consumes (see its fields).

Images are decoded and resized in background threads (Pillow releases the
GIL), so decoding overlaps the device work of the previous batch.
"""

from __future__ import annotations

import collections.abc
import concurrent.futures as futures
from typing import Iterator, Sequence

import flax
import numpy as np

from palijudge.data import images as images_lib
from palijudge.data import tokenizer as tok_lib
from palijudge.data.examples import Example
from palijudge.errors import UserError, where
from palijudge.inputs import Inputs


_LOSS_BUCKETS = (2, 4, 8, 16, 32, 64)


@flax.struct.dataclass
class Batch:
  """One batch of B rows (a pytree: jit, shardings and donation see its arrays)."""
  text: np.ndarray          # (B, T) i32, right-padded; T is the shortest bucket that fits.
  mask_ar: np.ndarray       # (B, T) i32: 0 prompt (full attention), 1 answer (causal).
  mask_loss: np.ndarray     # (B, T) i32: 1 on the answer tokens the loss reads.
  mask_input: np.ndarray    # (B, T) i32: 1 on real tokens, 0 on padding.
  prefix_len: np.ndarray | None = None  # (B,) i32: prompt tokens incl. bos and "\\n".
  label: np.ndarray | None = None       # (B,) i32: 1 = yes, 0 = no.
  loss_idx: np.ndarray | None = None   # (B, L) i32: positions whose output predicts an answer token.
  loss_w: np.ndarray | None = None     # (B, L) f32: 1 where loss_idx is real.
  example_w: np.ndarray | None = None  # (B,) f32: 0 for rows that only pad a short last batch.
  image: np.ndarray | None = None      # (B, S, S, 3) f32 in [-1, 1] ...
  zimg: np.ndarray | None = None       # ... or (B, P, D) image tokens from the feature cache.

  def inputs(self) -> Inputs:
    """What the model reads (prompt-only batches; `.drop_last()` for teacher forcing)."""
    return Inputs(self.text, self.mask_ar, self.mask_input, self.image, self.zimg)


def loss_index(mask_loss_BxT: np.ndarray, width: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Indices t (into text[:, :-1]) whose next token text[t + 1] is in the loss."""
  target = mask_loss_BxT[:, 1:] > 0
  n = int(target.sum(1).max()) if target.size else 0
  width = width or tok_lib.bucket_length(max(n, 1), buckets=_LOSS_BUCKETS)
  idx = np.zeros((len(target), width), np.int32)
  w = np.zeros((len(target), width), np.float32)
  for b, row in enumerate(target):
    pos = np.flatnonzero(row)
    idx[b, :len(pos)] = pos
    w[b, :len(pos)] = 1.0
  return idx, w


def prompt_for(ex: Example, default_prompt: str) -> str:
  return ex.prefix if ex.prefix else default_prompt


def shape_for(texts: Sequence[tok_lib.TokenizedText]) -> tuple[int, int]:
  """(seqlen, loss width) buckets that fit every text: one compile per dataset."""
  seqlen = tok_lib.bucket_length(max(len(t.tokens) for t in texts))
  n_loss = max(int(t.mask_loss.sum()) for t in texts)
  return seqlen, tok_lib.bucket_length(max(n_loss, 1), buckets=_LOSS_BUCKETS)


def collate(texts: Sequence[tok_lib.TokenizedText], labels: Sequence[bool],
            pixels: np.ndarray | None = None, zimg: np.ndarray | None = None,
            batch_size: int | None = None, shape: tuple[int, int] | None = None
            ) -> Batch:
  """Pads texts to `shape` (default: buckets that fit) and rows to `batch_size`."""
  n = len(texts)
  b = batch_size or n
  if n == 0 or n > b:
    raise ValueError(f"collate: {n} examples for a batch of {b}")
  fill = list(texts) + [texts[0]] * (b - n)
  seqlen, width = shape or shape_for(fill)
  padded = tok_lib.pad_batch(fill, seqlen)
  loss_idx, loss_w = loss_index(padded["mask_loss"], width)
  return Batch(**padded, label=np.array(list(labels) + [False] * (b - n), np.int32),
               loss_idx=loss_idx, loss_w=loss_w, example_w=(np.arange(b) < n).astype(np.float32),
               image=None if pixels is None else _pad_rows(pixels, b),
               zimg=None if zimg is None else _pad_rows(zimg, b))


def _pad_rows(x: np.ndarray, b: int) -> np.ndarray:
  if len(x) == b:
    return x
  return np.concatenate([x, np.repeat(x[:1], b - len(x), axis=0)])


class PixelCache:
  """Preprocessed images kept in memory up to a byte budget (exact f32 values).

  Training revisits every image once per epoch and evaluation revisits them
  before and after training; decoding each image once is enough.
  """

  def __init__(self, budget_bytes: int = 2 << 30):
    self.budget = budget_bytes
    self.used = 0
    self.store: dict[tuple, np.ndarray] = {}

  def get(self, ex: Example, size: int, gif_frame: str) -> np.ndarray:
    """(size, size, 3): the one frame `gif_frame` names of `ex`'s image."""
    return self._kept((ex.image, size, gif_frame), lambda: load_pixels(ex, size, gif_frame))

  def frames(self, ex: Example, size: int, k: int) -> np.ndarray:
    """(F, size, size, 3): every frame of `ex`'s image, or `k` evenly spaced (0: all)."""
    return self._kept((ex.image, size, "all", k), lambda: load_frames(ex, size, k))

  def _kept(self, key: tuple, load) -> np.ndarray:
    hit = self.store.get(key)
    if hit is not None:
      return hit
    x = load()
    if self.used + x.nbytes <= self.budget:
      self.store[key] = x
      self.used += x.nbytes
    return x


def load_pixels(ex: Example, size: int, gif_frame: str) -> np.ndarray:
  """One preprocessed image; errors name the data file and line too."""
  try:
    return images_lib.load_image(ex.image, size, gif_frame)
  except UserError as e:
    raise UserError(f"{where(ex.source, ex.line)}: {e}") from None


def load_frames(ex: Example, size: int, k: int) -> np.ndarray:
  """Every frame (or `k` evenly spaced) preprocessed; errors name the data file and line."""
  try:
    return images_lib.load_frames(ex.image, size, k)
  except UserError as e:
    raise UserError(f"{where(ex.source, ex.line)}: {e}") from None


class Batches:
  """Iterates collated batches over `examples` in the given order.

  `examples` may be a lazy `TrainingStream`: batches are cut from it as they
  are needed, never all at once. Texts are tokenized once per distinct
  example (a stream's `examples`), and all batches pad to the one shape that fits them. `flips` (an array or
  `Flips`) mirrors the images it marks. `rows` (a multi-process run, see
  `distributed.batch_rows`): only these rows of every batch are loaded and
  yielded, this process's share.
  """

  def __init__(self, examples: Sequence[Example], tok: tok_lib.Tokenizer, image_size: int,
               batch_size: int, prompt: str, with_suffix: bool, gif_frame: str = "first",
               workers: int = 4, flips: Sequence[bool] | None = None,
               cache: PixelCache | None = None, rows: slice | None = None):
    self.examples = examples if isinstance(examples, TrainingStream) else list(examples)
    distinct = examples.examples if isinstance(examples, TrainingStream) else self.examples
    self.rows = rows if rows is not None else slice(0, batch_size)
    self.tok, self.size, self.bs = tok, image_size, batch_size
    self.prompt, self.with_suffix, self.gif_frame = prompt, with_suffix, gif_frame
    self.workers = workers
    self.cache = cache
    self.flips = flips  # Training augmentation: which images to mirror left-right.
    self.texts = {id(e): self._tokenize(e) for e in distinct}
    self.shape = shape_for(list(self.texts.values()))

  def _tokenize(self, e: Example) -> tok_lib.TokenizedText:
    return tok_lib.tokenize(self.tok, prompt_for(e, self.prompt),
                            e.suffix if self.with_suffix else None)

  def __len__(self) -> int:
    return -(-len(self.examples) // self.bs)

  def _chunk(self, i: int) -> list[Example]:
    # Indexed, not sliced: a stream then keeps its epoch's permutation from batch to batch.
    rows = range(i * self.bs, min((i + 1) * self.bs, len(self.examples)))[self.rows]
    return [self.examples[k] for k in rows]

  def __iter__(self) -> Iterator[tuple[list[Example], Batch]]:
    mine = self.rows  # Of each batch: all of it, or this process's share.
    n = len(self)
    with futures.ThreadPoolExecutor(self.workers) as pool:
      get = self.cache.get if self.cache is not None else load_pixels
      load = lambda c: pool.map(lambda e: get(e, self.size, self.gif_frame), c)
      chunks = [self._chunk(i) for i in range(min(2, n))]
      pending = [load(c) for c in chunks]  # Two batches in flight.
      for i in range(n):
        chunk = chunks.pop(0)
        pixels = np.stack(list(pending.pop(0)))
        if self.flips is not None:
          flip = np.asarray(self.flips[i * self.bs:(i + 1) * self.bs], bool)[mine]
          pixels[flip] = pixels[flip][:, :, ::-1]
        if i + 2 < n:
          chunks.append(self._chunk(i + 2))
          pending.append(load(chunks[-1]))
        texts = [self.texts[id(e)] for e in chunk]
        yield chunk, collate(texts, [e.label for e in chunk], pixels,
                             batch_size=mine.stop - mine.start, shape=self.shape)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  """A fresh permutation per epoch, fixed by (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


class TrainingStream(collections.abc.Sequence):
  """Exactly steps * batch_size examples: shuffled epochs (`epoch_order`), concatenated.

  Lazy: an element is computed when it is read (one epoch's permutation is
  kept), and a slice is a view, so a huge --steps costs no memory and no
  time up front. `examples` are the distinct examples it draws from.
  """

  def __init__(self, examples: Sequence[Example], steps: int, batch_size: int, seed: int,
               start: int = 0, stop: int | None = None):
    if not examples:
      raise ValueError("a training stream needs examples")
    self.examples, self.seed = list(examples), seed
    self.steps, self.batch_size = steps, batch_size
    self.start = start
    self.stop = steps * batch_size if stop is None else stop
    self._order: tuple[int, np.ndarray | None] = (-1, None)

  def __len__(self) -> int:
    return max(0, self.stop - self.start)

  def __getitem__(self, i):
    if isinstance(i, slice):
      a, b, step = i.indices(len(self))
      if step != 1:
        return [self[k] for k in range(a, b, step)]
      return TrainingStream(self.examples, self.steps, self.batch_size, self.seed,
                            self.start + a, self.start + max(a, b))
    if i < 0:
      i += len(self)
    if not 0 <= i < len(self):
      raise IndexError(i)
    epoch, k = divmod(self.start + i, len(self.examples))
    if self._order[0] != epoch:
      self._order = (epoch, epoch_order(len(self.examples), self.seed, epoch))
    return self.examples[self._order[1][k]]


def training_stream(examples: Sequence[Example], steps: int, batch_size: int,
                    seed: int) -> TrainingStream:
  """Exactly steps * batch_size examples: shuffled epochs, concatenated (lazily)."""
  return TrainingStream(examples, steps, batch_size, seed)


class Flips(collections.abc.Sequence):
  """Whether to mirror each element of a stream of `n`, from element `start` on: the values
  of `default_rng(seed).random(n) < 0.5`, drawn per slice (the generator advanced to the
  slice's start), never all n at once."""

  def __init__(self, seed: int, n: int, start: int = 0):
    self.seed, self.n, self.start = seed, n, start

  def __len__(self) -> int:
    return max(0, self.n - self.start)

  def __getitem__(self, i):
    if isinstance(i, slice):
      a, b, step = i.indices(len(self))
      return self._draw(a, max(a, b))[::step]
    if i < 0:
      i += len(self)
    if not 0 <= i < len(self):
      raise IndexError(i)
    return bool(self._draw(i, i + 1)[0])

  def _draw(self, a: int, b: int) -> np.ndarray:
    rng = np.random.default_rng(self.seed)
    rng.bit_generator.advance(self.start + a)  # PCG64: one 64-bit draw per double.
    return rng.random(b - a) < 0.5
