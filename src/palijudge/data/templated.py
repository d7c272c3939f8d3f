"""Templated web ads with planted edits: the duplicate audit's benchmark data.

Web ads are built from templates: one layout, backdrop and palette, filled with
another product and another text. Two ads on one template look alike to a
greyscale hash, yet they are different examples; an ad flipped, cropped,
recoloured or re-encoded is the same example. `make_benchmark` writes both
kinds, seeded, with the truth beside them:

  templates   `templates` layouts (size, backdrop, palette, where the product,
              text, price badge and button go), each filled with
              `ads_per_template` ads: another product drawn in other colours
              and other text. The last ad of a template keeps the first ad's
              product and changes only the text (the hardest look-alike).
  edits       `per_kind` edited copies of randomly chosen ads for each kind of
              EDITS (an exact copy, resized, re-encoded, a GIF, cropped 3-6 %
              a side, mirrored, brighter or darker, recoloured, and a
              combination), each labelled like its original.

`Truth` says which rows show the same ad (its `ad` id) and which share a
template; the audit's benchmark (`audit_bench`) scores pairs against it. The
same arguments give the same files for a given Pillow version.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from palijudge import files
from palijudge.data.synthetic import encode

EDITS = ("copy", "resize", "jpeg", "gif", "crop", "flip", "brightness", "colour", "combined")
_SIZES = ((300, 250), (336, 280), (250, 250), (300, 300), (320, 240), (240, 320))
_WORDS = ("vitamin natural organic fresh pure daily boost energy relief formula skin care glow "
          "hair strong slim fit sale new limited offer today only free shipping save best "
          "clinically tested doctor recommended gentle premium quality trusted brand deal "
          "family health immune sleep calm focus protein green tea collagen serum cream").split()
_BUTTONS = ("BUY NOW", "SHOP NOW", "ORDER TODAY", "LEARN MORE", "TRY IT", "GET YOURS")


@dataclasses.dataclass(frozen=True)
class Template:
  """What the ads of one template share."""
  size: tuple[int, int]
  backdrop: str  # gradient, solid or stripes
  colours: tuple[tuple[int, int, int], ...]  # backdrop a, backdrop b, accent, text, button
  product_left: bool
  header_top: bool
  font: int


@dataclasses.dataclass(frozen=True)
class Row:
  """One generated image: its file, label, and what it is (the truth)."""
  image: str  # Relative to the benchmark folder.
  label: bool
  ad: int  # Rows of the same ad (an original and its edits) share it.
  template: int
  product: int  # Ads showing the same product drawing share it.
  edit: str  # "" for an original ad, else one of EDITS.


@dataclasses.dataclass(frozen=True)
class Truth:
  rows: tuple[Row, ...]
  data: Path  # The data.jsonl written.

  def same_ad(self, i: int, j: int) -> bool:
    return self.rows[i].ad == self.rows[j].ad

  def same_template(self, i: int, j: int) -> bool:
    return self.rows[i].template == self.rows[j].template


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
  return tuple(int(v) for v in rng.integers(low, high, 3))


def template(rng: np.random.Generator) -> Template:
  size = _SIZES[int(rng.integers(len(_SIZES)))]
  light = _colour(rng, 170, 256)
  colours = (light, tuple(max(0, c - int(rng.integers(20, 90))) for c in light),
             _colour(rng, 0, 200), _colour(rng, 0, 90), _colour(rng, 0, 256))
  return Template(size, ("gradient", "solid", "stripes")[int(rng.integers(3))], colours,
                  bool(rng.integers(2)), bool(rng.integers(2)), int(rng.integers(14, 20)))


def _backdrop(t: Template) -> Image.Image:
  w, h = t.size
  a, b = (np.array(c, np.float64) for c in t.colours[:2])
  if t.backdrop == "gradient":
    mix = np.linspace(0, 1, h)[:, None, None] * np.ones((1, w, 1))
  elif t.backdrop == "stripes":
    mix = ((np.arange(w)[None, :] + np.arange(h)[:, None]) // 14 % 2)[..., None] * 0.35
    mix = mix * np.ones((h, w, 1))
  else:
    mix = np.zeros((h, w, 1))
  return Image.fromarray(np.round(a * (1 - mix) + b * mix).astype(np.uint8), "RGB")


def _product(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box) -> None:
  """A product in the box: a bottle, box, jar or tube, in colours of its own."""
  x0, y0, x1, y1 = box
  w, h = x1 - x0, y1 - y0
  body, cap, label = _colour(rng), _colour(rng), _colour(rng, 150, 256)
  kind = int(rng.integers(4))
  if kind == 0:  # Bottle: body, neck, cap.
    draw.rounded_rectangle([x0 + w * .2, y0 + h * .3, x1 - w * .2, y1], w // 8, fill=body)
    draw.rectangle([x0 + w * .4, y0 + h * .12, x1 - w * .4, y0 + h * .3], fill=body)
    draw.rectangle([x0 + w * .38, y0, x1 - w * .38, y0 + h * .12], fill=cap)
  elif kind == 1:  # Box with a lid band.
    draw.rectangle([x0 + w * .1, y0 + h * .25, x1 - w * .1, y1], fill=body)
    draw.rectangle([x0 + w * .1, y0 + h * .25, x1 - w * .1, y0 + h * .38], fill=cap)
  elif kind == 2:  # Jar: wide body, lid.
    draw.ellipse([x0 + w * .05, y0 + h * .35, x1 - w * .05, y1], fill=body)
    draw.rectangle([x0 + w * .15, y0 + h * .2, x1 - w * .15, y0 + h * .45], fill=cap)
  else:  # Tube, lying diagonally.
    draw.polygon([(x0 + w * .1, y1 - h * .2), (x1 - w * .25, y0 + h * .1),
                  (x1 - w * .05, y0 + h * .3), (x0 + w * .3, y1)], fill=body)
    draw.ellipse([x1 - w * .3, y0, x1 - w * .02, y0 + h * .28], fill=cap)
  lx, ly = (x0 + x1) / 2, y0 + h * .65
  draw.rectangle([lx - w * .18, ly - h * .1, lx + w * .18, ly + h * .1], fill=label)
  for k in range(int(rng.integers(1, 4))):  # Marks on the label.
    mx = lx - w * .15 + k * w * .1
    draw.ellipse([mx, ly - h * .05, mx + w * .07, ly + h * .05], fill=_colour(rng))


def _words(rng: np.random.Generator, n: int) -> str:
  return " ".join(_WORDS[int(i)] for i in rng.integers(len(_WORDS), size=n))


def ad(t: Template, product: np.random.Generator, text: np.random.Generator) -> Image.Image:
  """One ad on template t: the product drawn from `product`'s draws, the text from `text`'s."""
  img = _backdrop(t)
  draw = ImageDraw.Draw(img)
  w, h = t.size
  _, _, accent, ink, button = t.colours
  band = (0, 0, w, h // 5) if t.header_top else (0, h - h // 5, w, h)
  draw.rectangle(band, fill=accent)
  font = ImageFont.load_default(size=t.font)
  small = ImageFont.load_default(size=max(9, t.font - 5))
  draw.text((band[0] + 8, band[1] + h // 20), _words(text, 3).upper(), font=font,
            fill=(255, 255, 255))
  body_y = h // 5 + 8 if t.header_top else 8
  half = w // 2
  px0 = 6 if t.product_left else half + 2
  _product(draw, product, (px0, body_y, px0 + half - 8, body_y + int(h * .55)))
  tx = half + 4 if t.product_left else 8
  for k in range(3):
    draw.text((tx, body_y + k * (t.font + 2)), _words(text, 2), font=small, fill=ink)
  price = f"${int(text.integers(5, 99))}.99"
  cy = body_y + int(h * .38)
  draw.ellipse([tx, cy, tx + t.font * 4, cy + t.font * 2], fill=accent)
  draw.text((tx + 6, cy + t.font // 2), price, font=small, fill=(255, 255, 255))
  by = body_y + int(h * .58) - t.font
  draw.rounded_rectangle([tx, by, tx + w // 2 - 16, by + t.font + 10], 6, fill=button)
  draw.text((tx + 6, by + 4), _BUTTONS[int(text.integers(len(_BUTTONS)))], font=small,
            fill=ink if sum(button) > 380 else (255, 255, 255))
  return img


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
  """3-6 % off each side, drawn per side."""
  w, h = img.size
  left, top, right, bottom = rng.uniform(0.03, 0.06, 4)
  return img.crop((round(w * left), round(h * top), round(w * (1 - right)),
                   round(h * (1 - bottom))))


def _recolour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
  """A hue turned by 15-40 degrees either way and the saturation scaled by 0.7-1.3."""
  hsv = np.asarray(img.convert("HSV"), np.int32).copy()
  turn = int(rng.integers(11, 29)) * (1 if rng.integers(2) else -1)  # Of 256 hue steps.
  hsv[..., 0] = (hsv[..., 0] + turn) % 256
  hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.7, 1.3), 0, 255)
  return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def edit(img: Image.Image, kind: str, rng: np.random.Generator, original: bytes
         ) -> tuple[bytes, str]:
  """(file bytes, extension) of the `kind` edit (EDITS) of an ad whose file is `original`."""
  if kind == "copy":
    return original, ""
  w, h = img.size
  if kind == "resize":
    s = rng.uniform(0.45, 0.8)
    return encode(img.resize((round(w * s), round(h * s)), Image.LANCZOS), "png"), "png"
  if kind == "jpeg":
    return encode(img, "jpg", int(rng.integers(15, 35))), "jpg"
  if kind == "gif":
    return encode(img, "gif"), "gif"
  if kind == "crop":
    return encode(_crop(img, rng), "png"), "png"
  if kind == "flip":
    return encode(img.transpose(Image.FLIP_LEFT_RIGHT), "png"), "png"
  if kind == "brightness":
    f = rng.uniform(0.7, 0.85) if rng.integers(2) else rng.uniform(1.15, 1.35)
    return encode(ImageEnhance.Brightness(img).enhance(f), "jpg", 85), "jpg"
  if kind == "colour":
    return encode(_recolour(img, rng), "png"), "png"
  if kind == "combined":  # Mirrored, cropped, shrunk and re-encoded.
    out = _crop(img.transpose(Image.FLIP_LEFT_RIGHT), rng)
    s = rng.uniform(0.6, 0.9)
    out = out.resize((round(out.width * s), round(out.height * s)), Image.LANCZOS)
    return encode(out, "jpg", int(rng.integers(40, 70))), "jpg"
  raise ValueError(f"edit kind must be one of {EDITS}, got {kind!r}")


def make_benchmark(out_dir: str | os.PathLike, seed: int = 0, templates: int = 15,
                   ads_per_template: int = 4, per_kind: int = 3) -> Truth:
  """Writes out_dir/images/* and out_dir/data.jsonl (module docstring); returns the truth."""
  out = Path(out_dir)
  rows: list[Row] = []
  originals = []  # (image, file bytes) of each ad.
  for t in range(templates):
    tpl = template(np.random.default_rng((seed, 0, t)))
    for a in range(ads_per_template):
      # The last ad of a template reuses the first one's product: only its text differs.
      same = a == ads_per_template - 1 and a > 0
      product = np.random.default_rng((seed, 1, t, 0 if same else a))
      img = ad(tpl, product, np.random.default_rng((seed, 2, t, a)))
      rng = np.random.default_rng((seed, 3, t, a))
      fmt = "jpg" if rng.random() < 0.3 else "png"
      data = encode(img, fmt)
      name = f"images/t{t:02d}-ad{a}.{fmt}"
      files.write_bytes(out / name, data)
      originals.append((img, data, fmt))
      rows.append(Row(name, bool(rng.integers(2)), len(originals) - 1, t,
                      t * ads_per_template + (0 if same else a), ""))
  rng = np.random.default_rng((seed, 4))
  for kind in EDITS:
    for k in range(per_kind):
      src = int(rng.integers(len(originals)))
      img, data, fmt = originals[src]
      blob, ext = edit(img, kind, rng, data)
      name = f"images/edit-{kind}-{k}-of-{Path(rows[src].image).stem}.{ext or fmt}"
      files.write_bytes(out / name, blob)
      rows.append(dataclasses.replace(rows[src], image=name, edit=kind))
  lines = [json.dumps({"prefix": "", "suffix": "yes" if r.label else "no", "image": r.image},
                      separators=(",", ":")) + "\n" for r in rows]
  data_path = out / "data.jsonl"
  files.write_text(data_path, lines)
  return Truth(tuple(rows), data_path)
