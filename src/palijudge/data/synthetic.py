"""The project's own generated data: a tiny tokenizer and an ad-like dataset.

Used by the embedded CPU demo. Both are deterministic: the same arguments
give the same bytes (for a given sentencepiece / Pillow version).

Dataset label cue: a "no" (NG) image carries one large bright red filled
circle (a violation stamp); a "yes" (OK) image carries none. Everything else
(pastel background, text-like bars, blue/green/grey shapes) is a distractor.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path

import numpy as np
import sentencepiece as spm
from PIL import Image, ImageDraw

from palijudge.errors import UserError, where
from palijudge import files
from palijudge.configs import DEFAULT_PROMPT
from palijudge.data import images

SPECIAL_IDS = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3)
# The tiny tokenizer's pieces: the "tiny" model preset's vocabulary (model.config) is this size.
TINY_VOCAB = 1024

_SUBJECTS = ("image", "ad", "advert", "advertisement", "banner", "poster",
             "product", "label", "package", "photo", "picture", "post")
_QUALITIES = ("appropriate", "compliant", "safe", "legal", "acceptable",
              "misleading", "allowed", "lawful", "suitable", "honest")
_LAWS = ("Federal Food, Drug, and Cosmetic Act", "FTC Act", "Lanham Act",
         "Consumer Product Safety Act", "Fair Packaging and Labeling Act",
         "Dietary Supplement Health and Education Act", "CAN-SPAM Act",
         "Children's Online Privacy Protection Act", "the law",
         "Truth in Advertising rules", "the advertising code",
         "Food Allergen Labeling and Consumer Protection Act")
_WORDS = """
the a an and or but not is are was were be been being have has had do does did
this that these those it its they them their there here what which who whom
when where why how all any both each few more most other some such no nor only
own same so than too very can will just should now one two three four five six
seven eight nine ten hundred thousand first second new old good bad high low
big small large long short young great little right left best better free sale
buy sell price cost cheap offer deal save money shop store online order today
now limited time only health food drug cosmetic medicine vitamin supplement
cream skin hair body weight loss diet sugar fat salt natural organic fresh
clean pure safe risk warning danger caution claim claims proven clinically
tested approved doctor recommended cure treat prevent disease pain relief fast
results guaranteed miracle secret formula brand product company customer user
people child children adult woman man family home life world city country
label package bottle box bag jar text logo photo picture image banner poster
color red blue green yellow black white orange purple pink brown gray circle
square line shape stamp mark sign symbol background foreground left right top
bottom center middle corner edge size shape style font title caption describe
answer question detect segment point find show shows showing shown contains
contain includes include with without for from into onto over under above
below between about after before during while because if then else also
again still even never always often sometimes usually every many much less
least rule rules law laws legal illegal act federal state agency commission
trade standard standards policy policies guideline guidelines compliance
violation violations consumer protection privacy data information true false
yes no maybe unknown correct incorrect allowed banned prohibited required
please click here learn more call visit website email phone number address
""".split()
_EXTRA = ("caption en", "answer en", "describe en", "detect stamp",
          "the food label shows a warning", "this ad makes a health claim",
          "the product claims to cure disease", "no red stamp is visible",
          "0 1 2 3 4 5 6 7 8 9 10 12 15 20 24 25 30 50 99 100 2024 2025",
          "$9.99 $19.99 50% off! Buy 1, get 1 free.", "e.g. i.e. etc. (c) [x]",
          "! ? . , ; : ' \" - _ / \\ ( ) [ ] { } < > @ # $ % ^ & * + = ~ |")


def _corpus() -> list[str]:
  """Fixed-order English training sentences (prompts, answers, word lists)."""
  out = [DEFAULT_PROMPT, DEFAULT_PROMPT + "\nyes", DEFAULT_PROMPT + "\nno"]
  for s, q, law in itertools.product(_SUBJECTS, _QUALITIES, _LAWS):
    out.append(f"Is this {s} {q} based on {law}?")
  for s, q in itertools.product(_SUBJECTS, _QUALITIES):
    out += [f"Is this a {q} {s}?", f"Does the {s} look {q}?\nno",
            f"The {s} is {q}.\nyes", f"Is the {s} {q} under the law?"]
  out += list(_EXTRA)
  for n in range(0, len(_WORDS), 12):
    chunk = _WORDS[n:n + 12]
    out += [" ".join(chunk), " ".join(w.capitalize() for w in chunk),
            ", ".join(reversed(chunk)) + "."]
  return out


def train_tiny_tokenizer(vocab_size: int = TINY_VOCAB) -> bytes:
  """Serialized sentencepiece BPE model with exactly `vocab_size` pieces.

  Ids: pad 0, eos 1, bos 2, unk 3, then "\\n", "yes", "no" (single tokens).
  Byte fallback makes any text encodable without unk.
  """
  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buf,
        model_type="bpe", vocab_size=vocab_size, **SPECIAL_IDS,
        user_defined_symbols=["\n", "yes", "no"], byte_fallback=True,
        add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, character_coverage=1.0,
        num_threads=1, shuffle_input_sentence=False, minloglevel=2)
  except RuntimeError as e:
    raise UserError(f"tiny tokenizer: training with vocab_size={vocab_size} "
                    f"failed ({str(e).splitlines()[0]})") from None
  data = buf.getvalue()
  got = spm.SentencePieceProcessor(model_proto=data).vocab_size()
  if got != vocab_size:
    raise UserError(f"tiny tokenizer: got {got} pieces, wanted {vocab_size}")
  return data


def write_tiny_tokenizer(path: str | os.PathLike,
                         vocab_size: int = TINY_VOCAB) -> Path:
  """Trains the tiny tokenizer and writes it atomically to `path`."""
  path = Path(path)
  files.write_bytes(path, train_tiny_tokenizer(vocab_size))
  return path


# Distractor colours: never red (the label cue), never close to it.
_DISTRACT = ((30, 30, 30), (70, 70, 80), (20, 60, 160), (40, 120, 220),
             (20, 130, 60), (90, 180, 90), (0, 150, 150), (120, 120, 120),
             (60, 40, 120), (200, 200, 60), (250, 250, 250))
_CIRCLES = ((20, 60, 200), (40, 140, 230), (20, 150, 70), (60, 200, 110))


def _rand_color(rng: np.random.Generator, table) -> tuple[int, int, int]:
  return tuple(int(c) for c in table[rng.integers(len(table))])


def _text_bars(draw: ImageDraw.ImageDraw, rng: np.random.Generator,
               w: int, h: int) -> None:
  """Rows of short dark bars that look like lines of text."""
  for _ in range(int(rng.integers(1, 5))):
    y = int(rng.integers(0, h))
    th = max(2, int(h * rng.uniform(0.02, 0.06)))
    x = int(rng.integers(0, max(1, w // 3)))
    color = _rand_color(rng, _DISTRACT[:4])
    for _ in range(int(rng.integers(2, 7))):
      ww = max(3, int(w * rng.uniform(0.04, 0.15)))
      draw.rectangle([x, y, x + ww, y + th], fill=color)
      x += ww + max(2, th // 2)
      if x >= w:
        break


def _shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator,
            w: int, h: int) -> None:
  """Random rectangles, triangles and blue/green circles (never red)."""
  for _ in range(int(rng.integers(1, 5))):
    x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
    s = max(4, int(min(w, h) * rng.uniform(0.08, 0.3)))
    kind = int(rng.integers(3))
    if kind == 0:
      draw.rectangle([x0, y0, x0 + s, y0 + s // 2], fill=_rand_color(rng, _DISTRACT))
    elif kind == 1:
      pts = [(x0, y0), (x0 + s, y0), (x0 + s // 2, y0 - s)]
      draw.polygon(pts, fill=_rand_color(rng, _DISTRACT))
    else:
      draw.ellipse([x0, y0, x0 + s, y0 + s], fill=_rand_color(rng, _CIRCLES))


def _stamp(draw: ImageDraw.ImageDraw, rng: np.random.Generator,
           w: int, h: int) -> None:
  """The label cue: a bright red filled circle, radius ~ min(w, h) / 5."""
  r = max(3, int(min(w, h) * rng.uniform(0.18, 0.22)))
  cx, cy = int(rng.integers(r, w - r + 1)), int(rng.integers(r, h - r + 1))
  red = (int(rng.integers(225, 256)), int(rng.integers(0, 30)),
         int(rng.integers(0, 30)))
  draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=red)


def make_image(rng: np.random.Generator, violation: bool) -> Image.Image:
  """One RGB ad-like image, 80..320 px per side (H, W random)."""
  w, h = (int(v) for v in rng.integers(80, 321, size=2))
  bg = tuple(int(v) for v in rng.integers(190, 251, size=3))
  img = Image.new("RGB", (w, h), bg)
  draw = ImageDraw.Draw(img)
  _text_bars(draw, rng, w, h)
  _shapes(draw, rng, w, h)
  if violation:
    _stamp(draw, rng, w, h)
  return img


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
  """The image file's bytes: jpg (at `quality`), gif or png."""
  buf = io.BytesIO()
  if fmt == "jpg":
    img.save(buf, format="JPEG", quality=quality)
  elif fmt == "gif":
    img.save(buf, format="GIF")
  else:
    img.save(buf, format="PNG")
  return buf.getvalue()


def _labels(n: int, seed: int, yes_fraction: float) -> np.ndarray:
  """(n,) bool, True = yes; exactly round(n * yes_fraction) are True."""
  labels = np.arange(n) < int(round(n * yes_fraction))
  return np.random.default_rng((seed, 1)).permutation(labels)


def make_dataset(out_dir: str | os.PathLike, n: int = 160, seed: int = 0,
                 yes_fraction: float = 0.6, duplicates: int = 0) -> Path:
  """Writes out_dir/images/*.{png,jpg,gif} and out_dir/data.jsonl.

  Rows look like {"prefix":"","suffix":"no","image":"images/NG_00001.png"};
  images are ~75% PNG, ~20% JPEG (quality 90), ~5% static GIF. `duplicates`
  more rows follow, as web ads repeat: variants (`VARIANTS`, in turn) of
  randomly chosen earlier images, with their labels, named like
  images/OK_00025-dup-of-00007-resized.png.
  """
  out = Path(out_dir)
  if n < 1 or not 0.0 <= yes_fraction <= 1.0:
    raise UserError(f"{where(out)}: need n >= 1 and 0 <= yes_fraction <= 1, "
                    f"got n={n}, yes_fraction={yes_fraction}")
  rows = []
  for i, yes in enumerate(_labels(n, seed, yes_fraction)):
    rng = np.random.default_rng((seed, 2, i))
    fmt = ("png", "jpg", "gif")[rng.choice(3, p=(0.75, 0.2, 0.05))]
    name = f"images/{'OK' if yes else 'NG'}_{i + 1:05d}.{fmt}"
    files.write_bytes(out / name, encode(make_image(rng, not yes), fmt))
    rows.append(json.dumps({"prefix": "", "suffix": "yes" if yes else "no",
                            "image": name}, separators=(",", ":")))
  rows += _duplicate_rows(out, rows, duplicates, seed)
  path = out / "data.jsonl"
  files.write_bytes(path, ("\n".join(rows) + "\n").encode("utf-8"))
  return path


# Variants of one image, as the same creative reappears on the web: an exact
# copy, half the size, re-encoded as a low-quality JPEG, cropped by ~1 % a side
# (1-3 pixels here), and the first frame of an animated GIF.
VARIANTS = ("copy", "resized", "jpeg", "cropped", "gif")


def variant(path: str | os.PathLike, kind: str, seed: int = 0) -> tuple[bytes, str]:
  """(file bytes, extension) of a `kind` variant (see VARIANTS) of the image at `path`."""
  if kind == "copy":
    return Path(path).read_bytes(), Path(path).suffix.lstrip(".")
  img = Image.fromarray(images.decode_rgb(path))
  w, h = img.size
  buf = io.BytesIO()
  if kind == "resized":
    img.resize((max(16, w // 2), max(16, h // 2)), Image.LANCZOS).save(buf, format="PNG")
  elif kind == "jpeg":
    img.save(buf, format="JPEG", quality=30)
  elif kind == "cropped":
    c = max(1, round(min(w, h) / 100))
    img.crop((c, c, w - c, h - c)).save(buf, format="PNG")
  elif kind == "gif":
    other = make_image(np.random.default_rng((seed, 4)), False).resize((w, h))
    img.save(buf, format="GIF", save_all=True, append_images=[other], duration=500, loop=0)
  else:
    raise ValueError(f"variant kind must be one of {VARIANTS}, got {kind!r}")
  return buf.getvalue(), {"resized": "png", "jpeg": "jpg", "cropped": "png", "gif": "gif"}[kind]


def _duplicate_rows(out: Path, rows: list[str], count: int, seed: int) -> list[str]:
  """`count` JSONL rows of variants of randomly chosen rows among `rows` (their labels kept)."""
  rng = np.random.default_rng((seed, 3))
  added = []
  for d in range(count):
    src = json.loads(rows[int(rng.integers(len(rows)))])
    kind = VARIANTS[d % len(VARIANTS)]
    data, ext = variant(out / src["image"], kind, seed + d)
    stem = Path(src["image"]).stem
    name = (f"images/{stem[:2]}_{len(rows) + d + 1:05d}-dup-of-{stem[3:]}-{kind}.{ext}")
    files.write_bytes(out / name, data)
    added.append(json.dumps(dict(src, image=name), separators=(",", ":")))
  return added
