"""Whether two images show the same ad: signatures, alignment, and two pixel checks.

The duplicate audit (`audit`) finds candidate pairs cheaply and then looks at
each closely. Edits of one ad keep its geometry up to a mirror and a crop, and
change colours globally; another ad on the same template keeps the layout and
the palette but changes the product and the text, locally. So:

  signature   per image: pHash (64 bits, `imagehash`) of the image, of its
              mirror, and of the centre of each (5 % off every side), and a
              128 px thumbnail. Nearly flat images have no signature.
  candidates  pairs whose pHash differ in at most `limit` bits under the best
              of those alignments (flip-aware, crop-tolerant).
  compare     aligns the pair at 64 px (mirrored or not, which side is
              cropped, how much off each side, up to 8 %: the crop that
              correlates best), brings each image's colours to the other's
              through one quadratic colour map fitted over the whole image
              (clipped to 0-1, as a brightened ad clips), and measures:
                structure  1 - the worst of 8 x 8 blocks' R^2 (at 128 px, on
                           the detail between 1 and 4 px blurs, best of +-1 px
                           shifts, both ways) when one image's block predicts
                           the other's grey by a colour map of its own: other
                           text or another product does not fit. 0 = the same
                           shapes.
                colour     the worst of 8 x 8 blocks' mean error (0-1, at 64
                           px) after one affine colour map over the whole
                           image: a recoloured or brightened ad fits, a locally
                           recoloured one does not.
Nothing here decides: `audit` turns these numbers into duplicate / possible.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import imagehash
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

THUMB = 128  # Pixels per side of the thumbnail the checks use.
ALIGN = 64  # Pixels per side at which the alignment is searched.
GRID = 8  # Blocks per side (both checks): 16 px blocks at THUMB, 8 px at ALIGN.
HASH_BITS = 64
CENTRE = 0.05  # Off each side for the centre hashes.
MAX_CROP = 0.08  # The most off one side that the alignment tries.
_FLAT_STD = 4.0  # Grey levels (0-255) over a 32x32 thumbnail; below it nothing to compare.
_FLOOR = 1e-3  # Per-pixel variance (of 0-1 values) below which a block counts as flat.
_BLUR, _COARSE = 1.0, 4.0  # Pixels (at THUMB): the detail `structure` compares lies between.
_BLOCK_CELLS = 1 << 23  # Pairs scored at once by `close` (32 MiB of float32 per temporary).
Box = tuple[float, float, float, float]  # Off the left, top, right, bottom (fractions).
_NONE: Box = (0.0, 0.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Signature:
  hashes: np.ndarray  # (4, 64) bool: pHash of the image, its mirror, its centre, the mirror's.
  thumb: np.ndarray  # (THUMB, THUMB, 3) uint8.


@dataclasses.dataclass(frozen=True)
class Likeness:
  """How alike two images are, at the alignment that fits best (module docstring)."""
  bits: int  # pHash bits apart, best alignment of the hashes.
  mirrored: bool
  crop: float  # The most cut off one side of either image (fraction).
  structure: float
  colour: float


def signature(rgb: np.ndarray) -> Signature | None:
  """The signature of a uint8 RGB image; None for a nearly flat one."""
  img = Image.fromarray(rgb)
  # Lanczos, not a box average, which aliases fine detail differently at each scale (a
  # resized copy would differ in every letter); reducing_gap keeps a large ad cheap.
  thumb = (img.resize((THUMB, THUMB), Image.LANCZOS, reducing_gap=2.0)
           if img.size != (THUMB, THUMB) else img)
  grey = thumb.convert("L")
  if np.asarray(grey.resize((32, 32), Image.LANCZOS), np.float64).std() < _FLAT_STD:
    return None
  mirror = grey.transpose(Image.FLIP_LEFT_RIGHT)
  c = CENTRE * THUMB
  centre = (c, c, THUMB - c, THUMB - c)
  views = (grey, mirror, grey.resize((THUMB, THUMB), Image.BOX, box=centre),
           mirror.resize((THUMB, THUMB), Image.BOX, box=centre))
  hashes = np.stack([imagehash.phash(v).hash.ravel() for v in views])
  return Signature(hashes, np.asarray(thumb, np.uint8))


# --- Candidates: all pairs, blockwise -----------------------------------------


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Bit differences between the rows of two 0/1 float32 matrices: |a| + |b| - 2 a.b (BLAS)."""
  return a.sum(1)[:, None] + b.sum(1)[None, :] - 2 * (a @ b.T)


def close(score: Callable[[int, int], np.ndarray], n: int, hit: Callable[[np.ndarray], np.ndarray],
          nearest: Callable[[np.ndarray], float]
          ) -> tuple[list[tuple[int, int, float]], float | None]:
  """Pairs (i, j, value), i < j, whose score passes `hit`, and the nearest score that did not.

  score(s, e) gives rows s..e-1 against columns s..n-1 (the upper triangle, by blocks);
  nearest is np.min for distances, np.max for similarities.
  """
  out, best = [], []
  rows = max(16, _BLOCK_CELLS // max(n, 1))
  for s in range(0, n, rows):
    e = min(n, s + rows)
    v = score(s, e)
    upper = np.arange(s, n)[None, :] > np.arange(s, e)[:, None]
    ok = upper & hit(v)
    out += [(s + int(i), s + int(j), float(v[i, j])) for i, j in zip(*np.nonzero(ok))]
    rest = v[upper & ~ok]
    if rest.size:
      best.append(float(nearest(rest)))
  return out, float(nearest(best)) if best else None


# Hash pairs compared (image a's view, image b's view): as is, one side's centre
# (the other cropped), and the same against b's mirror.
_VIEW_PAIRS = ((0, 0), (2, 0), (0, 2), (0, 1), (2, 1), (0, 3))


def candidates(hashes: np.ndarray, limit: int) -> tuple[list[tuple[int, int, float]], int | None]:
  """Pairs (i < j) of (N, 4, 64) signature hashes at most `limit` bits apart (best view pair).

  Also returns the smallest distance above the limit (None: no other pair).
  """
  h = [np.ascontiguousarray(hashes[:, k], np.float32) for k in range(4)]

  def score(s, e):
    d = [_hamming(h[u][s:e], h[v][s:]) for u, v in _VIEW_PAIRS]
    d += [_hamming(h[v][s:e], h[u][s:]) for u, v in _VIEW_PAIRS[1:3] + _VIEW_PAIRS[4:]]
    return np.minimum.reduce(d)

  pairs, near = close(score, len(hashes), lambda v: v <= limit, np.min)
  return pairs, None if near is None else int(near)


def hash_bits(a: Signature, b: Signature) -> int:
  """The pHash distance of one pair under the best view pair (as `candidates`)."""
  x, y = a.hashes, b.hashes
  d = [np.sum(x[u] != y[v]) for u, v in _VIEW_PAIRS]
  d += [np.sum(y[u] != x[v]) for u, v in _VIEW_PAIRS[1:3] + _VIEW_PAIRS[4:]]
  return int(min(d))


# --- The close look -------------------------------------------------------------


def _view(img: Image.Image, box: Box, size: int, mirror: bool) -> np.ndarray:
  """float32 (size, size[, 3]) in 0-1 of img's `box`, resampled, mirrored if asked."""
  n = img.width
  l, t, r, b = box
  arr = np.asarray(img.resize((size, size), Image.BILINEAR,
                              box=(n * l, n * t, n * (1 - r), n * (1 - b))), np.float32) / 255
  return arr[:, ::-1] if mirror else arr


def _mismatch(x: np.ndarray, y: np.ndarray) -> float:
  """1 - Pearson correlation of two grey images (0: identical up to gain and offset)."""
  x, y = x.ravel() - x.mean(), y.ravel() - y.mean()
  den = float(np.sqrt((x @ x) * (y @ y)))
  return 1.0 - float(x @ y) / den if den > 0 else 1.0


def _descend(cost: Callable[[Box], float], box: Box, best: float) -> tuple[float, Box]:
  """Coordinate descent on the four sides, steps of 2, 1 and 0.5 % (within 0..MAX_CROP)."""
  for step in (0.02, 0.01, 0.005):
    moved = True
    while moved:
      moved = False
      for k in range(4):
        for d in (-step, step):
          trial = list(box)
          trial[k] = round(trial[k] + d, 4)
          if 0 <= trial[k] <= MAX_CROP:
            c = cost(tuple(trial))
            if c < best - 1e-6:
              best, box, moved = c, tuple(trial), True
  return best, box


def align(a: Image.Image, b: Image.Image) -> tuple[float, bool, bool, Box]:
  """(1 - correlation, mirrored, a is the cropped one, box off the other) that correlates best,
  on grey images."""
  starts = []
  for mirror in (False, True):
    for a_inner in (True, False):
      inner, outer = (a, b) if a_inner else (b, a)
      target = _view(inner, _NONE, ALIGN, mirror)
      cost = lambda box, o=outer, y=target: _mismatch(_view(o, box, ALIGN, False), y)  # noqa: E731
      for c in (0.0, 0.025, 0.05, 0.075, 0.1):
        box = (c, c, c, c)
        starts.append((cost(box), mirror, a_inner, box, cost))
  starts.sort(key=lambda s: s[0])
  refined = [(*_descend(cost, box, m), mirror, a_inner) for m, mirror, a_inner, box, cost
             in starts[:2]]
  return min(refined, key=lambda r: r[0])


def _blocks(z: np.ndarray) -> np.ndarray:
  """(S, S, C) -> (GRID * GRID blocks, pixels per block, C)."""
  h, w, c = z.shape
  k = h // GRID
  return z.reshape(GRID, k, GRID, k, c).transpose(0, 2, 1, 3, 4).reshape(GRID * GRID, k * k, c)


def _affine(z: np.ndarray) -> np.ndarray:
  """(N, 3) colours -> (N, 4): the terms of an affine colour map."""
  return np.concatenate([z, np.ones((len(z), 1))], 1)


def _quadratic(z: np.ndarray) -> np.ndarray:
  """(N, 3) colours -> (N, 10): the terms of a quadratic colour map."""
  r, g, b = z.T
  return np.stack([r, g, b, np.ones_like(r), r * r, g * g, b * b, r * g, g * b, r * b], 1)


def recolour(src: np.ndarray, dst: np.ndarray, terms=_quadratic) -> np.ndarray:
  """src through the one colour map (of `terms`) that brings it closest to dst, clipped to 0-1.

  Clipping matters: a brightened ad loses the light shapes that saturate to white,
  and src mapped so loses them too.
  """
  d = terms(src.reshape(-1, 3).astype(np.float64))
  t = dst.reshape(-1, 3).astype(np.float64)
  coef = np.linalg.solve(d.T @ d + 1e-6 * np.eye(d.shape[1]), d.T @ t)
  return np.clip(d @ coef, 0.0, 1.0).reshape(src.shape)


def _fit_r2(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Per block: R^2 of dst's grey predicted by an affine map of src's RGB (flat dst: floor)."""
  q = dst.mean(2, keepdims=True)
  d = np.concatenate([src, np.ones(src.shape[:2] + (1,), np.float64)], 2)
  dt = d.transpose(0, 2, 1)
  h = dt @ q
  w = np.linalg.solve(dt @ d + 1e-6 * np.eye(4), h)
  res = np.maximum((q * q).sum((1, 2)) - (h * w).sum((1, 2)), 0.0)
  tot = ((q - q.mean(1, keepdims=True)) ** 2).sum((1, 2))
  return 1.0 - res / np.maximum(tot, _FLOOR * q.shape[1])


def _worst_block(x: np.ndarray, y: np.ndarray) -> float:
  """1 - the worst block's R^2 of two blurred aligned images, both ways, best of +-1 px."""
  s = x.shape[0]
  pad = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
  by = _blocks(y)
  best = np.full(len(by), -np.inf)
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      bx = _blocks(pad[1 + dy:1 + dy + s, 1 + dx:1 + dx + s])
      best = np.maximum(best, np.minimum(_fit_r2(bx, by), _fit_r2(by, bx)))
  return float(np.clip(1.0 - best.min(), 0.0, 1.0))


def _band(z: np.ndarray) -> np.ndarray:
  """The image's detail: a difference of Gaussians (1 and 4 px), each colour on its own.

  The fine blur forgives a resampled or misaligned pixel; taking away the coarse one
  leaves the strokes of letters and the edges of shapes, where ads on one template
  differ, and not the bands of text lines and panels, where they agree.
  """
  z = z.astype(np.float64)
  return gaussian_filter(z, (_BLUR, _BLUR, 0)) - gaussian_filter(z, (_COARSE, _COARSE, 0))


def structure(x: np.ndarray, y: np.ndarray) -> float:
  """How differently two aligned (S, S, 3) images are drawn (module docstring), 0-1."""
  return min(_worst_block(_band(recolour(x, y)), _band(y)),
             _worst_block(_band(x), _band(recolour(y, x))))


def colour(x: np.ndarray, y: np.ndarray) -> float:
  """The worst block's mean error (0-1) after one affine colour map over the whole image, the
  better way round. Affine, not quadratic: a flat ad has so few colours that a quadratic map
  could send a recoloured region back on its own."""
  err = [np.abs(recolour(src, dst, _affine) - dst).mean(2, keepdims=True)
         for src, dst in ((x, y), (y, x))]
  return min(float(_blocks(e).mean((1, 2)).max()) for e in err)


def compare(a: Signature, b: Signature) -> Likeness:
  """How alike two signed images are (module docstring)."""
  ia, ib = Image.fromarray(a.thumb), Image.fromarray(b.thumb)
  _, box, mirror, a_inner = align(ia.convert("L"), ib.convert("L"))
  inner, outer = (ia, ib) if a_inner else (ib, ia)
  views = {size: (_view(inner, _NONE, size, mirror), _view(outer, box, size, False))
           for size in (ALIGN, THUMB)}
  return Likeness(hash_bits(a, b), mirror, max(box), structure(*views[THUMB]),
                  colour(*views[ALIGN]))
