"""palijudge.data.audit: exact and near-duplicates, groups, leaks and label conflicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from palijudge.data import audit, examples, synthetic
from palijudge.data.audit import AuditConfig
from palijudge.errors import UserError


def _example(path: Path, label: bool = True, line: int = 1) -> examples.Example:
  return examples.Example(image=str(path), label=label, prefix="", suffix="yes" if label else "no",
                          source=str(path.parent / "set.jsonl"), line=line,
                          raw_image=path.name)


def _shapes(seed: int) -> Image.Image:
  """A structurally different image: random background and 3-8 random shapes."""
  rng = np.random.default_rng((seed, 9))
  w, h = (int(v) for v in rng.integers(120, 300, 2))
  img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(3, 9))):
    x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
    s = int(rng.integers(10, min(w, h) // 2))
    shape = draw.rectangle if rng.integers(2) else draw.ellipse
    shape([x, y, x + s, y + s], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
  return img


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  """(bases, variants {base index: [(kind, example)]}, unrelated) on disk."""
  d = tmp_path_factory.mktemp("audit")
  bases, variants = [], {}
  for b in range(4):
    path = d / f"base{b}.png"
    synthetic.make_image(np.random.default_rng((7, b)), bool(b % 2)).save(path)
    bases.append(_example(path, line=b + 1))
    variants[b] = []
    for kind in synthetic.VARIANTS:
      data, ext = synthetic.variant(path, kind, seed=b)
      out = d / f"base{b}-{kind}.{ext}"
      out.write_bytes(data)
      variants[b].append((kind, _example(out)))
  rows = examples.read_jsonl(synthetic.make_dataset(d / "synthetic", n=40, seed=11))
  for s in range(20):
    _shapes(s).save(d / f"shapes{s}.png")
  unrelated = rows + [_example(d / f"shapes{s}.png") for s in range(20)]
  return bases, variants, unrelated


def _group_of(found: audit.Audit, item: int) -> set[int]:
  return next((set(g.members) for g in found.groups if item in g.members), {item})


def test_every_variant_is_found_and_nothing_unrelated(planted):
  bases, variants, unrelated = planted
  flat_variants = [(b, kind, ex) for b, vs in variants.items() for kind, ex in vs]
  found = audit.find({"train": bases + unrelated, "valid": [ex for _, _, ex in flat_variants]})
  n_train = len(bases) + len(unrelated)
  for k, (b, kind, _) in enumerate(flat_variants):
    expected = {b} | {n_train + j for j, (c, _, _) in enumerate(flat_variants) if c == b}
    assert _group_of(found, n_train + k) == expected, (kind, b)
  assert len(found.groups) == len(bases)  # Unrelated images are in no group.
  assert all(g.leak and g.sets == ("train", "valid") and not g.conflict for g in found.groups)
  assert {p.method for p in found.pairs} == {"sha256", "phash"}
  copies = [p for p in found.pairs if p.method == "sha256"]
  assert sorted(p.b - n_train for p in copies) == [
      j for j, (_, kind, _) in enumerate(flat_variants) if kind == "copy"]
  assert found.nearest_bits is not None and found.nearest_bits > found.config.hash_bits


def test_without_the_perceptual_hash_only_copies_are_found(planted):
  bases, variants, _ = planted
  found = audit.find({"a": bases[:1], "b": [ex for _, ex in variants[0]]},
                     AuditConfig(hash_bits=-1))
  assert found.config.methods == ("sha256",)
  assert [(p.a, p.b, p.method) for p in found.pairs] == [(0, 1, "sha256")]  # VARIANTS[0]: copy


def test_groups_are_connected_components_with_conflicts_and_leaks(tmp_path):
  a = tmp_path / "a.png"
  synthetic.make_image(np.random.default_rng(1), False).save(a)
  (tmp_path / "b.png").write_bytes(a.read_bytes())  # a == b by content
  data, _ = synthetic.variant(tmp_path / "b.png", "resized")
  (tmp_path / "c.png").write_bytes(data)  # b ~ c by phash
  other = tmp_path / "other.png"
  _shapes(3).save(other)
  sets = {"train": [_example(a, True), _example(other, True, 2)],
          "extra": [_example(tmp_path / "b.png", False), _example(tmp_path / "c.png", True)]}
  found = audit.find(sets)
  assert len(found.groups) == 1
  g = found.groups[0]
  assert g.members == (0, 2, 3) and g.methods == ("sha256", "phash")
  assert g.sets == ("train", "extra") and g.leak and g.conflict
  assert found.leaks == [g] and found.conflicts == [g]
  ids = found.group_ids()
  assert ids[0] == ids[2] == ids[3] != ids[1]
  assert "1 group(s) of 3 images kept together" in found.kept_line()
  assert "with both labels" in found.kept_line()
  text = "\n".join(audit.report(found))
  assert "group 1: 3 images, leak across train/extra, found by sha256, phash; labels disagree" in text
  assert "#1-#2 sha256" in text and "1 leak(s) across sets" in text


def test_no_duplicates(planted):
  _, _, unrelated = planted
  found = audit.find({"all": unrelated})
  assert found.groups == () and found.pairs == ()
  assert (found.group_ids() == np.arange(len(unrelated))).all()
  assert found.kept_line() == "duplicates: none found (checked by sha256, phash)"


def test_unreadable_and_flat_images_are_reported_not_fatal(tmp_path):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
  flats = []
  for k, colour in enumerate(((200, 30, 30), (30, 30, 200))):
    flats.append(tmp_path / f"flat{k}.png")
    Image.new("RGB", (64, 48), colour).save(flats[-1])
  (tmp_path / "flat0-copy.png").write_bytes(flats[0].read_bytes())
  exs = [_example(p, line=i + 1) for i, p in enumerate(
      [bad, *flats, tmp_path / "flat0-copy.png"])]
  found = audit.find({"all": exs})
  assert [i for i, _ in found.unreadable] == [0] and "bad.png" in found.unreadable[0][1]
  assert found.flat == (1, 2)  # Two solid colours: no pattern, not grouped by phash.
  assert [g.members for g in found.groups] == [(1, 3)]  # The copy: by sha256.
  assert any("unreadable, skipped by phash: bad.png" in l for l in audit.report(found))


def test_config_is_checked():
  with pytest.raises(UserError, match="--hash-bits 64"):
    AuditConfig(hash_bits=64)
  with pytest.raises(UserError, match="--cosine 1.5"):
    AuditConfig(cosine=1.5)
  assert AuditConfig(embeddings=True).methods == ("sha256", "phash", "embedding")
  with pytest.raises(ValueError, match="embed function"):
    audit.find({}, AuditConfig(embeddings=True))


def test_report_shows_leaks_first_and_a_limit(planted):
  bases, variants, _ = planted
  sets = {"train": bases + [variants[0][1][1]], "valid": [variants[1][1][1]]}
  found = audit.find(sets)
  lines = audit.report(found, limit=1)
  heads = [l for l in lines if l.startswith("group ")]
  assert len(heads) == 1 and "leak across train/valid" in heads[0]
  assert "... and 1 more group(s)" in "\n".join(lines)


def test_embedding_route_on_the_tiny_encoder(tiny_lm, planted, tmp_path):
  from palijudge import train
  bases, variants, unrelated = planted
  base = bases[0]
  resave = tmp_path / "resaved.png"  # Same pixels, other bytes: not a sha256 match.
  Image.open(base.image).save(resave, compress_level=0)
  resized = next(ex for kind, ex in variants[0] if kind == "resized")
  copy = next(ex for kind, ex in variants[0] if kind == "copy")
  features = train.feature_cache(tiny_lm, "attn", "first")
  embedded = []

  def embed(exs):
    embedded.append(len(exs))
    return features.pooled(exs, tiny_lm.cfg.image_size)
  # The random tiny encoder maps every image close together; its near-duplicates
  # are closer still. Real encoders separate far more (default --cosine 0.97).
  cfg = AuditConfig(hash_bits=-1, embeddings=True, cosine=0.9995)
  sets = {"train": [base] + unrelated[:12], "valid": [_example(resave), resized, copy]}
  found = audit.find(sets, cfg, embed)
  assert embedded == [len(sets["train"]) + 2]  # The byte copy is embedded once, as its original.
  n = len(sets["train"])
  assert [g.members for g in found.groups] == [(0, n, n + 1, n + 2)]
  by = {(p.a, p.b): p for p in found.pairs}
  assert by[(0, n)].method == "embedding" and by[(0, n)].distance > 0.99999
  assert by[(0, n + 1)].method == "embedding" and by[(0, n + 2)].method == "sha256"
  assert found.nearest_cosine is not None and found.nearest_cosine < cfg.cosine


def test_blockwise_comparisons_match_brute_force(monkeypatch):
  from scipy.spatial.distance import cdist
  rng = np.random.default_rng(0)
  h = rng.integers(0, 2, (90, 128)).astype(bool)
  h[40:50] = h[0] ^ (rng.random((10, 128)) < 0.05)  # Near copies of row 0.
  x = rng.normal(size=(90, 16))
  x[60:70] = x[1] + 0.05 * rng.normal(size=(10, 16))
  monkeypatch.setattr(audit, "_BLOCK_CELLS", 16 * 90 // 4)  # Several blocks of 16 rows.
  got, nearest = audit._close_hashes(h, 10)
  bits = np.maximum(cdist(h[:, :64], h[:, :64], "hamming"),
                    cdist(h[:, 64:], h[:, 64:], "hamming")) * 64
  i, j = np.triu_indices(90, 1)
  want = [(a, b, float(round(bits[a, b]))) for a, b in zip(i, j) if bits[a, b] <= 10]
  assert sorted(got) == sorted(want) and len(want) >= 45
  assert nearest == round(min(bits[a, b] for a, b in zip(i, j) if bits[a, b] > 10))
  got, nearest = audit._close_vectors(x, 0.99)
  cos = 1 - cdist(x, x, "cosine")
  want = {(a, b) for a, b in zip(i, j) if cos[a, b] >= 0.99}
  assert {(a, b) for a, b, _ in got} == want and len(want) >= 45
  assert nearest == pytest.approx(max(cos[a, b] for a, b in zip(i, j) if cos[a, b] < 0.99),
                                  abs=1e-5)
