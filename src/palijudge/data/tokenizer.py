"""Sentencepiece tokenizer and PaliGemma's prefix-LM text layout.

One example is `[bos] + enc(prefix) + enc("\\n")` (the prompt, full attention)
followed by `enc(suffix) + [eos]` (the answer, causal, trained on):

  part    | mask_ar | mask_loss | mask_input
  prefix  |    0    |     0     |     1
  suffix  |    1    |     1     |     1
  padding |    0    |     0     |     0

See tests/fixtures/paligemma-tiny/README.md, "Inputs and masking".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

from palijudge.errors import UserError, where

SEPARATOR = "\n"
DEFAULT_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MASK_KEYS = ("mask_ar", "mask_loss", "mask_input")


class Tokenizer:
  """A loaded sentencepiece model with PaliGemma's special ids.

  `pad_id`, `eos_id`, `bos_id` come from the model (PaliGemma: 0, 1, 2);
  `yes_id` and `no_id` are the single tokens that "yes" and "no" encode to.
  """

  def __init__(self, sp: spm.SentencePieceProcessor, path: str):
    self.sp = sp
    self.path = path
    self.pad_id = self._special(sp.pad_id(), "pad")
    self.eos_id = self._special(sp.eos_id(), "eos")
    self.bos_id = self._special(sp.bos_id(), "bos")
    self.yes_id = self._single("yes")
    self.no_id = self._single("no")

  @classmethod
  def load(cls, path: str | os.PathLike) -> Tokenizer:
    """Loads a `.model` file; a missing or invalid file is a UserError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise UserError(f"{where(path)}: tokenizer file not found")
    sp = spm.SentencePieceProcessor()
    try:
      with open(path, "rb") as f:
        sp.LoadFromSerializedProto(f.read())
    except (OSError, RuntimeError, ValueError) as e:
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise UserError(
          f"{where(path)}: not a valid sentencepiece model ({reason})") from None
    return cls(sp, path)

  def _special(self, idx: int, name: str) -> int:
    if idx < 0:
      raise UserError(f"tokenizer {self.path}: the model defines no {name} id")
    return int(idx)

  def _single(self, word: str) -> int:
    ids = self.encode(word)
    if len(ids) != 1 or ids[0] == self.sp.unk_id():
      raise UserError(f"tokenizer {self.path}: {word!r} is not a single token")
    return ids[0]

  @property
  def vocab_size(self) -> int:
    return int(self.sp.vocab_size())

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos."""
    return [int(i) for i in self.sp.encode(text)]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; ids are converted to plain ints first."""
    return self.sp.decode([int(i) for i in ids])

  def __repr__(self) -> str:
    return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedText:
  """One unpadded example: four int32 arrays of shape (L,) and `prefix_len`.

  `prefix_len` counts the prefix tokens, bos and "\\n" included.
  """
  tokens: np.ndarray
  mask_ar: np.ndarray
  mask_loss: np.ndarray
  mask_input: np.ndarray
  prefix_len: int

  def __len__(self) -> int:
    return int(self.tokens.shape[0])


def _part(ids: list[int], ar: int, loss: int) -> list[np.ndarray]:
  n = len(ids)
  return [np.asarray(ids, np.int32), np.full(n, ar, np.int32),
          np.full(n, loss, np.int32), np.ones(n, np.int32)]


def tokenize(tok: Tokenizer, prefix: str,
             suffix: str | None = None) -> TokenizedText:
  """PaliGemma's layout: prefix part, then (if `suffix` is given) suffix part.

  Returns arrays of shape (L,), L = prefix_len + (len(enc(suffix)) + 1).
  """
  pre = [tok.bos_id] + tok.encode(prefix) + tok.encode(SEPARATOR)
  parts = [_part(pre, 0, 0)]
  if suffix is not None:
    parts.append(_part(tok.encode(suffix) + [tok.eos_id], 1, 1))
  cols = [np.concatenate(c).astype(np.int32) for c in zip(*parts)]
  return TokenizedText(*cols, prefix_len=len(pre))


def pad_batch(items: Sequence[TokenizedText],
              seqlen: int) -> dict[str, np.ndarray]:
  """Right-pads with 0 and stacks.

  Returns "text", "mask_ar", "mask_loss", "mask_input": (B, seqlen) int32 and
  "prefix_len": (B,) int32.
  """
  if seqlen < 1:
    raise UserError(f"pad_batch: seqlen must be positive, got {seqlen}")
  b = len(items)
  out = {k: np.zeros((b, seqlen), np.int32) for k in ("text",) + MASK_KEYS}
  for i, item in enumerate(items):
    n = len(item)
    if n > seqlen:
      raise UserError(f"example {i} has {n} tokens but seqlen is {seqlen}: "
                      f"a length of at least {n} is needed")
    out["text"][i, :n] = item.tokens
    for k in MASK_KEYS:
      out[k][i, :n] = getattr(item, k)
  out["prefix_len"] = np.asarray([it.prefix_len for it in items],
                                 np.int32).reshape(b)
  return out


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """Smallest bucket >= n; above the largest, n rounded up to a multiple of 128."""
  for b in sorted(buckets):
    if b >= n:
      return int(b)
  return int(-(-n // 128) * 128)
