"""palijudge.data.audit: copies and edited copies, template look-alikes, groups, leaks, label
conflicts, possible duplicates and the user's decisions; audit_report's text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from palijudge.data import audit, audit_report, decisions, examples, synthetic, templated
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
def bench(tmp_path_factory):
  """Templated ads with one edit of each kind: (truth, examples)."""
  truth = templated.make_benchmark(tmp_path_factory.mktemp("ads"), seed=1, templates=4,
                                   ads_per_template=3, per_kind=1)
  return truth, examples.read_jsonl(truth.data)


@pytest.fixture(scope="module")
def found(bench):
  return audit.find({"ads": bench[1]})


@pytest.fixture(scope="module")
def loose(bench):
  """Every pair that got the close look and is no duplicate, as a possible one."""
  return audit.find({"ads": bench[1]}, AuditConfig(possible=1.0))


def _group_of(found: audit.Audit, item: int) -> set[int]:
  return next((set(g.members) for g in found.groups if item in g.members), {item})


def test_every_planted_edit_is_a_duplicate_of_its_original(bench, found):
  truth, _ = bench
  for i, row in enumerate(truth.rows):
    if row.edit:
      assert row.ad in _group_of(found, i), row.edit
  kinds = {truth.rows[p.b].edit: p for p in found.pairs if truth.rows[p.b].edit}
  assert kinds["copy"].method == "sha256" and kinds["flip"].likeness.mirrored
  assert kinds["crop"].likeness.crop >= 0.03 and kinds["combined"].likeness.mirrored
  assert all(p.method == "pixels" for k, p in kinds.items() if k != "copy")


def test_no_template_lookalike_is_a_duplicate(bench, found):
  truth, _ = bench
  for g in found.groups:
    assert len({truth.rows[i].ad for i in g.members}) == 1, g  # One ad per group.
  lookalikes = [p for p in found.pairs if not truth.same_ad(p.a, p.b)]
  assert all(p.level == audit.POSSIBLE for p in lookalikes)
  assert len(found.groups) == len({r.ad for r in truth.rows if r.edit})


def test_flips_crops_and_colour_variants_across_sets_are_leaks(tmp_path):
  base = templated.ad(templated.template(np.random.default_rng(4)), np.random.default_rng(5),
                      np.random.default_rng(6))
  w, h = base.size
  variants = {"flip": base.transpose(Image.FLIP_LEFT_RIGHT),
              "crop": base.crop((round(w * .05), round(h * .05), round(w * .95), round(h * .95))),
              "brighter": ImageEnhance.Brightness(base).enhance(1.25),
              "colour": templated._recolour(base, np.random.default_rng(2)),
              "greyer": ImageEnhance.Color(base).enhance(0.3)}
  base.save(tmp_path / "base.png")
  for name, img in variants.items():
    img.save(tmp_path / f"{name}.png")
  found = audit.find({"train": [_example(tmp_path / "base.png")],
                      "valid": [_example(tmp_path / f"{n}.png", line=k + 2)
                                for k, n in enumerate(variants)]})
  assert [g.members for g in found.groups] == [tuple(range(6))]
  assert found.groups[0].leak and found.groups[0].methods == ("pixels",)
  assert found.possible == []


def test_template_lookalikes_are_at_most_possible_and_never_fail(tmp_path):
  rng = lambda *k: np.random.default_rng((8, *k))  # noqa: E731
  tpl = templated.template(rng(0))
  sets = {}
  for a, (name, product) in enumerate((("train", 0), ("valid", 1), ("test", 0))):
    templated.ad(tpl, rng(1, product), rng(2, a)).save(tmp_path / f"ad{a}.png")
    sets[name] = [_example(tmp_path / f"ad{a}.png")]
  found = audit.find(sets)
  assert found.groups == () and found.leaks == []
  assert all(p.level == audit.POSSIBLE for p in found.pairs)


def test_groups_are_connected_components_with_conflicts_and_leaks(tmp_path):
  a = tmp_path / "a.png"
  synthetic.make_image(np.random.default_rng(1), False).save(a)
  (tmp_path / "b.png").write_bytes(a.read_bytes())  # a == b by content
  data, _ = synthetic.variant(tmp_path / "b.png", "resized")
  (tmp_path / "c.png").write_bytes(data)  # b ~ c by pixels
  other = tmp_path / "other.png"
  _shapes(3).save(other)
  sets = {"train": [_example(a, True), _example(other, True, 2)],
          "extra": [_example(tmp_path / "b.png", False), _example(tmp_path / "c.png", True)]}
  found = audit.find(sets)
  assert len(found.groups) == 1
  g = found.groups[0]
  assert g.members == (0, 2, 3) and g.methods == ("sha256", "pixels")
  assert g.sets == ("train", "extra") and g.leak and g.conflict
  assert found.leaks == [g] and found.conflicts == [g]
  ids = found.group_ids()
  assert ids[0] == ids[2] == ids[3] != ids[1]
  assert "1 group(s) of 3 images kept together (found by sha256 1, pixels 1)" in found.kept_line()
  assert "with both labels" in found.kept_line()
  text = "\n".join(audit_report.report(found))
  assert "group 1: 3 images, leak across train/extra, found by sha256, pixels; labels disagree" \
         in text
  assert "#1-#2 sha256" in text and "#1-#3 pixels: structure 0." in text
  assert "1 leak(s) across sets" in text


def test_no_duplicates_among_different_images(tmp_path):
  rows = examples.read_jsonl(synthetic.make_dataset(tmp_path / "syn", n=30, seed=11))
  for s in range(12):
    _shapes(s).save(tmp_path / f"shapes{s}.png")
  unrelated = rows + [_example(tmp_path / f"shapes{s}.png") for s in range(12)]
  found = audit.find({"all": unrelated})
  assert found.groups == ()
  assert (found.group_ids() == np.arange(len(unrelated))).all()
  assert found.kept_line().startswith("duplicates: none found (checked by sha256, pixels)")


def test_only_copies_without_the_close_look(bench):
  truth, rows = bench
  found = audit.find({"ads": rows}, AuditConfig(hash_bits=-1))
  assert found.config.methods == ("sha256",)
  copy = next(i for i, r in enumerate(truth.rows) if r.edit == "copy")
  assert [(p.a, p.b, p.method) for p in found.pairs] == [(truth.rows[copy].ad, copy, "sha256")]


def test_decisions_confirm_a_pair_into_a_group_and_dismiss_another(tmp_path, bench, loose):
  truth, rows = bench
  maybe = loose.possible
  assert maybe, "the benchmark has a possible pair to decide"
  look = maybe[0]
  other = next((i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))
               if not truth.same_template(i, j))
  path = tmp_path / "decisions.tsv"
  path.write_text("".join(decisions.line(d, rows[i].raw_image, rows[j].raw_image) + "\n"
                          for d, (i, j) in (("dismiss", (look.a, look.b)), ("confirm", other))))
  root = Path(rows[0].image).parent.parent
  again = audit.find({"ads": rows}, loose.config, decided=decisions.read(path, root),
                     decisions_file=str(path))
  assert again.dismissed == 1 and (look.a, look.b) not in {(p.a, p.b) for p in again.pairs}
  assert len(again.possible) == len(maybe) - 1
  joined = next(g for g in again.groups if other[0] in g.members)
  assert other[1] in joined.members and "confirmed" in joined.methods
  assert f"1 dismissed in {path}" in audit_report.report(again)[-1]


def test_possible_pairs_show_the_lines_to_decide_them(bench, loose):
  _, rows = bench
  found = loose
  text = audit_report.report(found, limit=1)
  p = found.possible[0]
  head = next(i for i, l in enumerate(text) if l.startswith("possible 1: 2 images, within ads, "))
  confirm = f"confirm\t{rows[p.a].raw_image}\t{rows[p.b].raw_image}"
  assert text[head + 3] == (f"  decide in audit-decisions.tsv: {confirm!r} or "
                            f"{confirm.replace('confirm', 'dismiss', 1)!r}")
  assert sum(l.startswith("possible ") for l in text) == 1
  assert any(l.startswith("... and ") and "more possible pair(s)" in l for l in text) == (
      len(found.possible) > 1)
  assert text[-1].endswith(f"; {len(found.possible)} possible duplicate pair(s), 0 across sets")


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
  assert found.flat == (1, 2)  # Two solid colours: nothing to compare, not grouped by pixels.
  assert [g.members for g in found.groups] == [(1, 3)]  # The copy: by sha256.
  assert any("unreadable, left to sha256: bad.png" in l for l in audit_report.report(found))


def test_config_is_checked():
  with pytest.raises(UserError, match="--hash-bits 64"):
    AuditConfig(hash_bits=64)
  with pytest.raises(UserError, match="--cosine 1.5"):
    AuditConfig(cosine=1.5)
  with pytest.raises(UserError, match="--duplicate 0.5 and --possible 0.4"):
    AuditConfig(duplicate=0.5, possible=0.4)
  assert AuditConfig(embeddings=True).methods == ("sha256", "pixels", "embedding")
  with pytest.raises(ValueError, match="embed function"):
    audit.find({}, AuditConfig(embeddings=True))


def test_report_shows_leaks_first_and_a_limit(bench):
  truth, rows = bench
  edits = [i for i, r in enumerate(truth.rows) if r.edit in ("flip", "crop")]
  train = [rows[i] for i in range(len(rows)) if i not in edits and truth.rows[i].edit != "copy"]
  found = audit.find({"train": train, "valid": [rows[edits[0]]]})
  lines = audit_report.report(found, limit=1)
  heads = [l for l in lines if l.startswith("group ")]
  assert len(heads) == 1 and "leak across train/valid" in heads[0]
  assert len(found.groups) > 1 and "more group(s)" in "\n".join(lines)


def test_embedding_route_on_the_tiny_encoder(tiny_lm, tmp_path):
  from palijudge import loader
  base = tmp_path / "base.png"
  synthetic.make_image(np.random.default_rng((7, 0)), False).save(base)
  resave = tmp_path / "resaved.png"  # Same pixels, other bytes: not a sha256 match.
  Image.open(base).save(resave, compress_level=0)
  smaller = tmp_path / "smaller.png"
  Image.open(base).resize((100, 80)).save(smaller)
  copy = tmp_path / "copy.png"
  copy.write_bytes(base.read_bytes())
  others = []
  for s in range(6):
    others.append(tmp_path / f"shapes{s}.png")
    _shapes(s).save(others[-1])
  features = loader.feature_cache(tiny_lm, "attn", "first")
  embedded = []

  def embed(exs):
    embedded.append(len(exs))
    return features.pooled(exs, tiny_lm.cfg.image_size)
  # The random tiny encoder maps every image close together; its near-duplicates are closer
  # still. Real encoders separate far more (default --cosine 0.97).
  cfg = AuditConfig(hash_bits=-1, embeddings=True, cosine=0.9995)
  sets = {"train": [_example(base)] + [_example(o) for o in others],
          "valid": [_example(resave), _example(smaller), _example(copy)]}
  found = audit.find(sets, cfg, embed)
  assert embedded == [len(sets["train"]) + 2]  # The byte copy is embedded once, as its original.
  n = len(sets["train"])
  assert [g.members for g in found.groups] == [(0, n, n + 1, n + 2)]
  by = {(p.a, p.b): p for p in found.pairs}
  assert by[(0, n)].method == "pixels" and by[(0, n)].cosine > 0.99999
  assert by[(0, n + 1)].method == "pixels" and by[(0, n + 2)].method == "sha256"
  # The encoder alone (the close look disagreeing) only ever makes a possible duplicate.
  assert all(p.method == "embedding" for p in found.possible)


def test_vector_pairs_match_brute_force():
  from scipy.spatial.distance import cdist
  rng = np.random.default_rng(0)
  x = rng.normal(size=(90, 16))
  x[60:70] = x[1] + 0.05 * rng.normal(size=(10, 16))
  got, nearest = audit._vectors(x, 0.99)
  cos = 1 - cdist(x, x, "cosine")
  i, j = np.triu_indices(90, 1)
  want = {(a, b) for a, b in zip(i, j) if cos[a, b] >= 0.99}
  assert {(a, b) for a, b, _ in got} == want and len(want) >= 45
  assert nearest == pytest.approx(max(cos[a, b] for a, b in zip(i, j) if cos[a, b] < 0.99),
                                  abs=1e-5)
