"""Image decoding and PaliGemma preprocessing.

`decode_rgb` turns any image file a user may hand us (PNG, JPEG, GIF, WebP,
BMP, ...) into a uint8 (H, W, 3) RGB array; `preprocess` turns that into the
float32 (size, size, 3) array in [-1, 1] that the model expects, matching
big_vision's colab preprocessing (see tests/fixtures/paligemma-tiny/README.md,
`pp_image_out`).
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps

from palijudge.configs import GIF_COMBINE, GIF_FRAMES, GIF_POLICIES  # noqa: F401
from palijudge.errors import UserError

# `all` (configs.GIF_POLICIES): evaluation scores every frame (or K evenly spaced) and
# combines p(yes) (see `frame_indices`, `combine`); where one frame is needed (training
# batches, `decode_rgb`), `all` means the first frame.

# Pillow raises these for corrupt, truncated or unsupported files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError,
                  TypeError, KeyError, struct.error)

_WHITE = (255, 255, 255, 255)


def _frame_index(n_frames: int, gif_frame: str) -> int:
  """Index of the frame to use in an animation of `n_frames` frames."""
  if gif_frame not in GIF_POLICIES:
    raise ValueError(f"gif_frame must be one of {GIF_POLICIES},"
                     f" got {gif_frame!r}")
  return {"first": 0, "all": 0, "middle": n_frames // 2, "last": n_frames - 1}[gif_frame]


def _check_size(img: Image.Image, path: str) -> None:
  """Refuses images whose pixel count exceeds Pillow's bomb limit.

  Pillow only warns between MAX_IMAGE_PIXELS and twice that; a judge never
  needs such an image, and decoding it could exhaust memory, so we refuse.
  """
  limit = Image.MAX_IMAGE_PIXELS
  w, h = img.size
  if limit and w * h > limit:
    raise UserError(f"{path}: image too large ({w}x{h} pixels, limit {limit});"
                    " possible decompression bomb")


def _high_bit_to_l(img: Image.Image) -> Image.Image:
  """16/32-bit integer or float grey image -> 8-bit "L".

  Pillow's own convert("L") clips I/I;16 values at 255 instead of scaling, so
  a 16-bit PNG would come out almost all white. Integer modes are taken as
  16-bit (0..65535, what 16-bit PNG/TIFF hold) and scaled by 255/65535; "F"
  is taken to be in 0..255 (Pillow's convention) and clipped.
  """
  a = np.asarray(img, dtype=np.float64)
  if img.mode != "F":
    a = a / 257.0
  a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
  return Image.fromarray(a)


def _to_rgb(img: Image.Image) -> Image.Image:
  """Any Pillow mode -> "RGB", compositing transparency onto white.

  Transparent pixels become white, not black: the images judged are ads,
  shown on white pages, and dropping the alpha channel would expose whatever
  colour the transparent pixels happen to store (often black), changing
  what the image looks like.
  """
  if img.mode in ("I", "F") or img.mode.startswith("I;"):
    img = _high_bit_to_l(img)
  has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La")
  if has_alpha or "transparency" in img.info:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")
  return img.convert("RGB")


def _decode(img: Image.Image, path: str, gif_frame: str) -> np.ndarray:
  """Selects the frame, applies EXIF orientation and converts to RGB."""
  _check_size(img, path)
  n_frames = getattr(img, "n_frames", 1)
  index = _frame_index(n_frames, gif_frame)
  if index:
    img.seek(index)
  img.load()
  if n_frames > 1:
    # Later GIF/APNG frames are only correct once composed with the earlier
    # ones; Pillow does that on seek, and RGBA keeps the frame's transparency.
    img = img.convert("RGBA")
  img = ImageOps.exif_transpose(img) or img
  return np.asarray(_to_rgb(img), dtype=np.uint8)


def _open_and(path: str, fn):
  """fn(opened Pillow image) with every decoding failure as a one-line UserError."""
  if not os.path.exists(path):
    raise UserError(f"{path}: image not found")
  if not os.path.isfile(path):
    raise UserError(f"{path}: not a file")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        return fn(img)
  except Image.DecompressionBombError as e:
    raise UserError(f"{path}: image too large; possible decompression bomb"
                    f" ({_one_line(e)})") from None
  except _DECODE_ERRORS as e:
    raise UserError(f"{path}: cannot decode image: {_one_line(e)}") from None


def decode_rgb(path: str | os.PathLike, gif_frame: str = "first") -> np.ndarray:
  """Decodes an image file into a uint8 (H, W, 3) RGB array.

  Animated GIF/APNG/WebP: `gif_frame` ("first", "middle" = n_frames // 2,
  "last"; "all" = first here) picks the frame. The whole file is decoded, so a
  truncated image fails here, not later. Bad input raises UserError naming the path.
  """
  path = os.fspath(path)
  _frame_index(1, gif_frame)  # validate the policy before touching the file
  return _open_and(path, lambda img: _decode(img, path, gif_frame))


def frame_indices(n_frames: int, k: int = 0) -> list[int]:
  """Every frame (k <= 0 or k >= n_frames), else k evenly spaced ones.

  Evenly spaced = round(linspace(0, n_frames - 1, k)): the first and the
  last frame are always included (k = 1: the first frame).
  """
  if n_frames < 1:
    raise ValueError(f"n_frames must be >= 1, got {n_frames}")
  if k <= 0 or k >= n_frames:
    return list(range(n_frames))
  if k == 1:
    return [0]
  return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, k)})


def _decode_frames(img: Image.Image, path: str, k: int) -> list[np.ndarray]:
  _check_size(img, path)
  n = getattr(img, "n_frames", 1)
  if n == 1:
    return [_decode(img, path, "first")]
  out = []
  for i in frame_indices(n, k):
    img.seek(i)  # Pillow composes GIF/APNG frames with the earlier ones.
    frame = ImageOps.exif_transpose(img.convert("RGBA"))
    out.append(np.asarray(_to_rgb(frame), dtype=np.uint8))
  return out


def decode_frames(path: str | os.PathLike, k: int = 0) -> list[np.ndarray]:
  """uint8 (H, W, 3) RGB arrays of the frames `frame_indices(n, k)` picks (a still: one)."""
  path = os.fspath(path)
  return _open_and(path, lambda img: _decode_frames(img, path, k))


def load_frames(path: str | os.PathLike, size: int, k: int = 0) -> np.ndarray:
  """Model-ready frames: float32 (F, size, size, 3) in [-1, 1]."""
  return np.stack([preprocess(f, size) for f in decode_frames(path, k)])


def combine(p_yes_F: np.ndarray, how: str) -> float:
  """One p(yes) for an animation from its frames' p(yes): min, mean or max.

  min: `yes` only if every frame looks fine (the cautious judge: one
  violating frame is enough for `no`); max: `yes` if any frame does; mean: the
  average frame.
  """
  if how not in GIF_COMBINE:
    raise ValueError(f"combine must be one of {GIF_COMBINE}, got {how!r}")
  p = np.asarray(p_yes_F, np.float64)
  return float({"min": np.min, "mean": np.mean, "max": np.max}[how](p))


def _one_line(e: BaseException) -> str:
  """Exception text squeezed to one line (UserError messages are one line)."""
  text = " ".join(str(e).split())
  return text or type(e).__name__


def _resize_channel(channel: np.ndarray, size: int) -> np.ndarray:
  """(H, W) float32 -> (size, size) float32, bilinear with antialiasing.

  reducing_gap=None keeps Pillow from pre-shrinking with a box filter, so
  the result matches TF's antialiased bilinear resize within ~2e-5.
  """
  img = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
  assert img.mode == "F", img.mode
  out = img.resize((size, size), Image.BILINEAR, reducing_gap=None)
  return np.asarray(out, dtype=np.float32)


def preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W, 3) RGB -> float32 (size, size, 3) in [-1, 1].

  Resizes to size x size (aspect ratio not kept) in floating point, as
  big_vision does, then maps [0, 255] to [-1, 1] with x / 127.5 - 1. An
  image already size x size is only rescaled.
  """
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
  if size <= 0:
    raise ValueError(f"size must be positive, got {size}")
  if rgb.shape[:2] == (size, size):
    x = rgb.astype(np.float32)
  else:
    x = np.stack([_resize_channel(rgb[..., c], size) for c in range(3)], -1)
  out = x / np.float32(127.5) - np.float32(1.0)
  # Bilinear weights are non-negative, so only float rounding can step past
  # the ends; clip to keep the documented range exact.
  return np.clip(out, -1.0, 1.0).astype(np.float32)


def load_image(path: str | os.PathLike, size: int,
               gif_frame: str = "first") -> np.ndarray:
  """Image file -> model-ready float32 (size, size, 3) in [-1, 1]."""
  return preprocess(decode_rgb(path, gif_frame), size)
