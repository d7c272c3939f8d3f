"""palijudge.data.templated: templated ads with planted edits, seeded, with their truth."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from palijudge.data import examples, images, templated


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  return templated.make_benchmark(tmp_path_factory.mktemp("ads"), seed=2, templates=3,
                                  ads_per_template=3, per_kind=1)


def _digest(truth, row) -> str:
  return hashlib.sha256((truth.data.parent / row.image).read_bytes()).hexdigest()


def test_rows_the_truth_and_the_dataset_agree(bench):
  rows = examples.read_jsonl(bench.data)
  assert len(rows) == len(bench.rows) == 3 * 3 + len(templated.EDITS)
  assert [r.raw_image for r in rows] == [r.image for r in bench.rows]
  assert [r.label for r in rows] == [r.label for r in bench.rows]
  originals = [r for r in bench.rows if not r.edit]
  assert [r.ad for r in originals] == list(range(9)) and len({r.template for r in originals}) == 3
  for r in bench.rows:
    if r.edit:  # An edit keeps its original's ad, template, product and label.
      src = bench.rows[r.ad]
      assert not src.edit and (r.template, r.product, r.label) == (src.template, src.product,
                                                                  src.label)
  # The last ad of a template shares the first one's product; the others have their own.
  for t in range(3):
    products = [r.product for r in originals if r.template == t]
    assert products[0] == products[-1] and len(set(products)) == 2
  assert sorted(r.edit for r in bench.rows if r.edit) == sorted(templated.EDITS)


def test_the_same_seed_gives_the_same_files_and_another_seed_others(bench, tmp_path):
  again = templated.make_benchmark(tmp_path / "a", seed=2, templates=3, ads_per_template=3,
                                   per_kind=1)
  assert [_digest(again, r) for r in again.rows] == [_digest(bench, r) for r in bench.rows]
  other = templated.make_benchmark(tmp_path / "b", seed=3, templates=3, ads_per_template=3,
                                   per_kind=1)
  assert not {_digest(other, r) for r in other.rows} & {_digest(bench, r) for r in bench.rows}


def test_each_edit_is_what_it_says(bench):
  folder = bench.data.parent
  for r in bench.rows:
    if not r.edit:
      continue
    src = images.decode_rgb(folder / bench.rows[r.ad].image).astype(np.int16)
    out = images.decode_rgb(folder / r.image).astype(np.int16)
    if r.edit == "copy":
      assert _digest(bench, r) == _digest(bench, bench.rows[r.ad])
    elif r.edit == "flip":
      assert np.abs(out - src[:, ::-1]).max() == 0
    elif r.edit in ("crop", "combined"):  # 3-6 % off each side (then shrunk, for combined).
      assert 0.86 * src.shape[1] <= out.shape[1] / (0.6 if r.edit == "combined" else 1)
      assert out.shape[0] < src.shape[0] * 0.95
    elif r.edit == "resize":
      assert 0.44 < out.shape[1] / src.shape[1] < 0.81
    else:  # Same size, other pixels: jpeg, gif, brightness, colour.
      assert out.shape == src.shape and np.abs(out - src).mean() > 0.2
  kinds = {r.edit: Image.open(folder / r.image).format for r in bench.rows if r.edit}
  assert (kinds["jpeg"], kinds["gif"], kinds["brightness"]) == ("JPEG", "GIF", "JPEG")


def test_lookalikes_share_the_template_and_differ_in_content(bench):
  folder = bench.data.parent
  pix = {r.ad: images.decode_rgb(folder / r.image).astype(np.int16) for r in bench.rows
         if not r.edit}
  same = [(a, b) for a in pix for b in pix if a < b and bench.same_template(a, b)]
  assert len(same) == 3 * 3
  for a, b in same:
    assert pix[a].shape == pix[b].shape  # One template, one size...
    differ = np.abs(pix[a] - pix[b]).max(2) > 40  # JPEG noise aside.
    assert 0.01 < differ.mean() < 0.6  # ... the same backdrop, other product and text.
  assert not bench.same_ad(0, 1) and bench.same_template(0, 1) and not bench.same_template(0, 3)


def test_an_unknown_edit_is_refused():
  with pytest.raises(ValueError, match="edit kind must be one of"):
    templated.edit(Image.new("RGB", (8, 8)), "rotate", np.random.default_rng(0), b"")
