"""palijudge.data.tokenizer: tokens and prefix-LM layout, against the paligemma-tiny fixture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from palijudge.errors import UserError
from palijudge.data.tokenizer import (TokenizedText, Tokenizer, bucket_length, pad_batch,
                                      tokenize)

from testing import FIXTURES

FIXTURE = FIXTURES / "paligemma-tiny"
PROMPT = ("Is this image appropriate based on Federal Food, Drug, "
          "and Cosmetic Act?")
EXAMPLES = [(PROMPT, "yes"), (PROMPT, "no"), ("Is this a safe product?", "no"),
            ("caption en", "the food label shows a warning")]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
  return Tokenizer.load(FIXTURE / "tokenizer.model")


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURE / "reference.npz") as f:
    return {k: f[k] for k in f.files if not k.startswith(("grad", "sgd"))}


def test_special_ids(tok):
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (512, 0, 1, 2)
  assert (tok.yes_id, tok.no_id) == (14, 13)
  assert tok.encode("\n") == [4]


def test_encode_decode_roundtrip(tok):
  ids = tok.encode(PROMPT)
  assert ids[0] != tok.bos_id and ids[-1] != tok.eos_id
  assert tok.decode(ids) == PROMPT
  assert tok.decode(np.asarray(ids, np.int32)) == PROMPT


def test_tokenize_literal(tok):
  t = tokenize(tok, "Is this a safe product?", "no")
  np.testing.assert_array_equal(t.tokens, [2, 48, 61, 5, 253, 101, 496, 4, 13, 1])
  np.testing.assert_array_equal(t.mask_ar, [0] * 8 + [1, 1])
  np.testing.assert_array_equal(t.mask_loss, [0] * 8 + [1, 1])
  np.testing.assert_array_equal(t.mask_input, [1] * 10)
  assert t.prefix_len == 8 and len(t) == 10
  for a in (t.tokens, t.mask_ar, t.mask_loss, t.mask_input):
    assert a.dtype == np.int32 and a.ndim == 1


def test_tokenize_default_prompt_yes(tok):
  t = tokenize(tok, PROMPT, "yes")
  assert t.tokens.tolist() == [2, 48, 61, 42, 67, 63, 52, 64, 60, 490, 59, 490,
                               57, 66, 56, 496, 4, 14, 1]
  assert t.prefix_len == 17


def test_tokenize_prompt_only(tok):
  t = tokenize(tok, "caption en")
  assert t.tokens.tolist() == [2, 157, 81, 4]
  assert t.mask_ar.tolist() == [0] * 4 and t.mask_loss.tolist() == [0] * 4
  assert t.mask_input.tolist() == [1] * 4 and t.prefix_len == 4


def test_empty_prefix(tok):
  t = tokenize(tok, "", "yes")
  assert t.tokens.tolist() == [2, 4, 14, 1] and t.prefix_len == 2


def test_batch_matches_reference(tok, ref):
  b = pad_batch([tokenize(tok, p, s) for p, s in EXAMPLES], 32)
  for k in ("text", "mask_ar", "mask_loss", "mask_input"):
    assert b[k].dtype == np.int32 and b[k].shape == (4, 32)
    np.testing.assert_array_equal(b[k], ref[f"batch/{k}"], err_msg=k)
  np.testing.assert_array_equal(b["prefix_len"], ref["prefix_len"])
  assert b["prefix_len"].dtype == np.int32


def test_pred_batch_matches_reference(tok, ref):
  b = pad_batch([tokenize(tok, p) for p, _ in EXAMPLES], 32)
  for k in ("text", "mask_ar", "mask_input"):
    np.testing.assert_array_equal(b[k], ref[f"pred_batch/{k}"], err_msg=k)
  assert not b["mask_loss"].any()
  np.testing.assert_array_equal(b["prefix_len"], [17, 17, 8, 4])


def test_pad_batch_too_long(tok):
  item = tokenize(tok, PROMPT, "yes")
  with pytest.raises(UserError, match="19"):
    pad_batch([item], 16)
  assert pad_batch([item], 19)["text"].shape == (1, 19)


def test_pad_batch_empty():
  b = pad_batch([], 8)
  assert b["text"].shape == (0, 8) and b["prefix_len"].shape == (0,)


def test_bucket_length():
  assert bucket_length(1) == 16 and bucket_length(16) == 16
  assert bucket_length(17) == 32 and bucket_length(100) == 128
  assert bucket_length(512) == 512 and bucket_length(513) == 640
  assert bucket_length(700) == 768 and bucket_length(10, (8, 12)) == 12


def test_tokenized_text_is_frozen(tok):
  t = tokenize(tok, "caption en")
  assert isinstance(t, TokenizedText)
  with pytest.raises(AttributeError):
    t.prefix_len = 3


def test_load_missing(tmp_path):
  path = tmp_path / "nope.model"
  with pytest.raises(UserError, match="nope.model"):
    Tokenizer.load(path)


def test_load_invalid(tmp_path):
  path = tmp_path / "bad.model"
  path.write_bytes(b"this is not a sentencepiece model")
  with pytest.raises(UserError, match="bad.model"):
    Tokenizer.load(path)


def _char_model(path: Path) -> None:
  """A char-level model: every word, "yes" included, is several tokens."""
  buf = io.BytesIO()
  corpus = ["yes no maybe", "the quick brown fox", "is this ok"] * 5
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_writer=buf, model_type="char",
      vocab_size=25, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      add_dummy_prefix=False, num_threads=1, minloglevel=2)
  path.write_bytes(buf.getvalue())


def test_yes_must_be_single_token(tmp_path):
  path = tmp_path / "char.model"
  _char_model(path)
  with pytest.raises(UserError, match="'yes' is not a single token") as e:
    Tokenizer.load(path)
  assert str(path) in str(e.value) and "\n" not in str(e.value)
