"""palijudge.data.likeness: signatures, flip/crop-aware candidates, alignment, the two checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from palijudge.data import likeness, templated

_DUPLICATE = 0.2  # Well inside audit.AuditConfig's duplicate threshold for these clean edits.


@pytest.fixture(scope="module")
def ads():
  """Three ads on one template (the third with the first one's product) and one on another."""
  rng = lambda *k: np.random.default_rng((5, *k))  # noqa: E731
  tpl = templated.template(rng(0))
  same = [templated.ad(tpl, rng(1, p), rng(2, a)) for a, p in ((0, 0), (1, 1), (2, 0))]
  return same + [templated.ad(templated.template(rng(3)), rng(1, 3), rng(2, 3))]


def _sig(img: Image.Image) -> likeness.Signature:
  return likeness.signature(np.asarray(img.convert("RGB")))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=quality)
  return Image.open(buf).convert("RGB")


def test_signature_has_four_hashes_and_a_thumbnail_and_none_when_flat():
  rng = np.random.default_rng(0)
  s = likeness.signature(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8))
  assert s.hashes.shape == (4, 64) and s.hashes.dtype == bool
  assert s.thumb.shape == (likeness.THUMB, likeness.THUMB, 3) and s.thumb.dtype == np.uint8
  assert likeness.signature(np.full((50, 60, 3), 200, np.uint8)) is None


def test_a_mirror_and_a_crop_are_close_in_hash_bits(ads):
  base = _sig(ads[0])
  flip = _sig(ads[0].transpose(Image.FLIP_LEFT_RIGHT))
  w, h = ads[0].size
  crop = _sig(ads[0].crop((round(w * .05), round(h * .05), round(w * .95), round(h * .95))))
  plain = lambda a, b: int(np.sum(a.hashes[0] != b.hashes[0]))  # noqa: E731
  assert plain(base, flip) > 16 and likeness.hash_bits(base, flip) <= 4
  assert likeness.hash_bits(base, crop) <= 4 < plain(base, crop) + 4
  assert likeness.hash_bits(flip, crop) == likeness.hash_bits(crop, flip) <= 6


@pytest.mark.parametrize("kind", ["flip", "crop", "brightness", "darker", "colour", "jpeg",
                                  "resize"])
def test_edits_of_one_ad_are_alike(ads, kind):
  img = ads[0]
  w, h = img.size
  edited = {"flip": lambda: img.transpose(Image.FLIP_LEFT_RIGHT),
            "crop": lambda: img.crop((round(w * .06), round(h * .03), round(w * .96),
                                      round(h * .95))),
            "brightness": lambda: ImageEnhance.Brightness(img).enhance(1.3),
            "darker": lambda: ImageEnhance.Brightness(img).enhance(0.7),
            "colour": lambda: templated._recolour(img, np.random.default_rng(1)),
            "jpeg": lambda: _jpeg(img, 20),
            "resize": lambda: img.resize((w // 2, h // 2), Image.LANCZOS)}[kind]()
  lk = likeness.compare(_sig(img), _sig(edited))
  assert lk.structure <= _DUPLICATE and lk.colour <= 0.1, lk
  assert lk.mirrored == (kind == "flip")
  assert (0.04 <= lk.crop <= 0.08) if kind == "crop" else lk.crop <= 0.02
  back = likeness.compare(_sig(edited), _sig(img))  # Either way round.
  assert back.structure == pytest.approx(lk.structure, abs=0.05)


def test_ads_on_one_template_are_not_alike(ads):
  sigs = [_sig(a) for a in ads]
  for i, j in ((0, 1), (0, 2), (1, 2)):
    lk = likeness.compare(sigs[i], sigs[j])
    assert lk.structure > 0.3, (i, j, lk)  # Another product, or only other text.
  assert likeness.compare(sigs[0], sigs[3]).structure > 0.5  # Another template.
  assert likeness.compare(sigs[0], sigs[0]).structure == pytest.approx(0.0, abs=1e-5)


def test_a_local_recolouring_is_seen_by_colour_not_structure(ads):
  img = np.asarray(ads[0]).copy()
  h, w, _ = img.shape
  part = img[h // 4:h // 2, : w // 2]
  img[h // 4:h // 2, : w // 2] = 255 - part  # One region's colours inverted: no global map.
  lk = likeness.compare(_sig(ads[0]), likeness.signature(img))
  assert lk.colour > 0.1


def test_candidates_match_brute_force(monkeypatch):
  rng = np.random.default_rng(0)
  h = rng.integers(0, 2, (70, 4, 64)).astype(bool)
  h[30:40, 1] = h[0, 0] ^ (rng.random((10, 64)) < 0.04)  # Mirrors of row 0, nearly.
  monkeypatch.setattr(likeness, "_BLOCK_CELLS", 16 * 70 // 4)  # Several blocks of rows.
  got, nearest = likeness.candidates(h, 8)
  sigs = [likeness.Signature(x, np.zeros((1, 1, 3), np.uint8)) for x in h]
  d = {(i, j): likeness.hash_bits(sigs[i], sigs[j]) for i in range(70) for j in range(i + 1, 70)}
  assert sorted((i, j, float(v)) for (i, j), v in d.items() if v <= 8) == sorted(got)
  assert {(i, j) for i, j, _ in got} >= {(0, k) for k in range(30, 40)}
  assert nearest == min(v for v in d.values() if v > 8)
