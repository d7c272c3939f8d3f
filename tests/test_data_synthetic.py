"""palijudge.data.synthetic: the generated tiny tokenizer and the synthetic ad dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from palijudge.data import synthetic
from palijudge.data.tokenizer import Tokenizer
from palijudge.errors import UserError
from palijudge.model import config


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
  return synthetic.write_tiny_tokenizer(
      tmp_path_factory.mktemp("tok") / "tiny.model")


@pytest.fixture(scope="module")
def tok(tiny_path) -> Tokenizer:
  return Tokenizer.load(tiny_path)


def test_tiny_tokenizer_ids(tok):
  # The "tiny" preset reads this tokenizer: their vocabularies are one size.
  assert tok.vocab_size == synthetic.TINY_VOCAB == config.preset("tiny").llm.vocab_size == 1024
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.sp.unk_id()) == (0, 1, 2, 3)
  assert tok.encode("\n") == [4]
  assert [tok.yes_id, tok.no_id] == [5, 6]


def test_tiny_tokenizer_roundtrip(tok):
  for text in (synthetic.DEFAULT_PROMPT, "Is this ad safe?\nno",
               "  two  spaces, $9.99!", "caption en"):
    assert tok.decode(tok.encode(text)) == text


def test_byte_fallback(tok):
  text = "この広告は適切ですか"
  ids = tok.encode(text)
  assert 3 not in ids
  assert tok.decode(ids) == text


def test_tiny_tokenizer_deterministic(tiny_path, tmp_path):
  again = synthetic.write_tiny_tokenizer(tmp_path / "again.model")
  assert again.read_bytes() == tiny_path.read_bytes()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_other_vocab_size(tmp_path):
  path = synthetic.write_tiny_tokenizer(tmp_path / "t.model", vocab_size=512)
  assert Tokenizer.load(path).vocab_size == 512


def _rows(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
  return synthetic.make_dataset(tmp_path_factory.mktemp("ds"), n=40, seed=3,
                                yes_fraction=0.6)


def test_dataset_rows(dataset):
  rows = _rows(dataset)
  assert dataset.name == "data.jsonl" and len(rows) == 40
  first = dataset.read_text().splitlines()[0]
  assert first.startswith('{"prefix":"","suffix":"')
  assert all(list(r) == ["prefix", "suffix", "image"] for r in rows)
  yes = sum(r["suffix"] == "yes" for r in rows)
  assert abs(yes - 0.6 * 40) <= 1
  assert {r["suffix"] for r in rows} == {"yes", "no"}
  for r in rows:
    tag = "OK" if r["suffix"] == "yes" else "NG"
    assert r["image"].startswith(f"images/{tag}_") and r["prefix"] == ""


def test_dataset_images_decode(dataset):
  formats = set()
  for r in _rows(dataset):
    with Image.open(dataset.parent / r["image"]) as im:
      formats.add(im.format)
      im = im.convert("RGB")
      assert 80 <= im.width <= 320 and 80 <= im.height <= 320
  assert "PNG" in formats and "JPEG" in formats


def _has_red_stamp(path: Path) -> bool:
  with Image.open(path) as im:
    a = np.asarray(im.convert("RGB")).astype(int)
  red = (a[..., 0] > 200) & (a[..., 1] < 70) & (a[..., 2] < 70)
  return red.mean() > 0.01


def test_label_cue(dataset):
  for r in _rows(dataset):
    assert _has_red_stamp(dataset.parent / r["image"]) == (r["suffix"] == "no")


def test_dataset_deterministic(tmp_path):
  a = synthetic.make_dataset(tmp_path / "a", n=12, seed=7)
  b = synthetic.make_dataset(tmp_path / "b", n=12, seed=7)
  c = synthetic.make_dataset(tmp_path / "c", n=12, seed=8)
  assert a.read_bytes() == b.read_bytes()
  pngs = [r["image"] for r in _rows(a) if r["image"].endswith(".png")]
  assert pngs
  for name in pngs:
    assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
  assert a.read_bytes() != c.read_bytes() or any(
      (a.parent / n).read_bytes() != (c.parent / n).read_bytes() for n in pngs
      if (c.parent / n).exists())


def test_gif_present_in_default_size(tmp_path):
  rows = _rows(synthetic.make_dataset(tmp_path, n=160, seed=0))
  exts = [r["image"].rsplit(".", 1)[1] for r in rows]
  assert exts.count("gif") >= 1 and exts.count("jpg") >= 10
  assert exts.count("png") > len(rows) // 2
  assert sum(r["suffix"] == "yes" for r in rows) == 96


def test_bad_arguments(tmp_path):
  with pytest.raises(UserError, match=str(tmp_path)):
    synthetic.make_dataset(tmp_path, n=0)
  with pytest.raises(UserError):
    synthetic.make_dataset(tmp_path, yes_fraction=1.5)


def test_dataset_with_duplicates(tmp_path):
  plain = synthetic.make_dataset(tmp_path / "plain", n=12, seed=4)
  data = synthetic.make_dataset(tmp_path / "dups", n=12, seed=4, duplicates=6)
  rows = [json.loads(l) for l in data.read_text().splitlines()]
  assert data.read_text().startswith(plain.read_text())  # The first n rows are unchanged.
  by_number = {r["image"][10:15]: r for r in rows[:12]}  # images/OK_00007.png -> 00007
  added = rows[12:]
  assert [r["image"].rsplit("-", 1)[1].split(".")[0] for r in added] == \
      list(synthetic.VARIANTS) + [synthetic.VARIANTS[0]]
  for r in added:
    source = by_number[r["image"].split("-dup-of-")[1][:5]]
    assert r["suffix"] == source["suffix"] and (tmp_path / "dups" / r["image"]).is_file()
  copy = added[0]["image"]
  source = by_number[copy.split("-dup-of-")[1][:5]]["image"]
  assert (tmp_path / "dups" / copy).read_bytes() == (tmp_path / "dups" / source).read_bytes()
  assert Image.open(tmp_path / "dups" / added[4]["image"]).n_frames == 2  # The gif variant.
  with pytest.raises(ValueError, match="variant kind"):
    synthetic.variant(tmp_path / "dups" / source, "mirror")
