"""Leakage audit: the same image (or nearly) in two places.

Web ads repeat: one creative at several sizes, re-encoded, cropped. An image in
both train and valid inflates every validation number. `find` looks for such
images within and across named sets (train, valid, test, extra, ...) by up to
three methods, cheapest first:

  sha256     the same file content (`files.sha256`): a copy, or the same row twice.
  phash      the same picture after resizing, re-encoding or a small crop: the
             perceptual hash pHash and the gradient hash dHash (64 bits each, the
             `imagehash` library) both differ in at most `hash_bits` bits. Nearly
             flat images (grey standard deviation below 4 levels) carry no
             pattern to hash and are left to the other methods.
  embedding  the frozen vision encoder sees the same thing: cosine similarity of
             pooled image embeddings (`FeatureCache.pooled`, given to `find` as a
             function) at least `cosine`.

Every match is a `Pair` (which method, how close); the groups are the connected
components of the graph of pairs (scipy), so A~B and B~C put A, B, C together. A
group spanning two sets is a leak; one holding both labels is a label conflict.
`Audit.group_ids` gives the splits (`splits.split`, `splits.write_folds`) one id
per example to keep each group on one side. Animated images are compared by
their first frame. No jax here: the embeddings come from the caller.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping, Sequence

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from palijudge import files, progress
from palijudge.data import images
from palijudge.data.examples import Example
from palijudge.errors import UserError
from palijudge.options import option

METHODS = ("sha256", "phash", "embedding")
HASH_BITS = 64  # Per hash: imagehash's default 8x8.
_FLAT_STD = 4.0  # Grey levels (0-255) over a 32x32 thumbnail; below it the hashes are noise.
_BLOCK_CELLS = 1 << 23  # Pairs scored at once (32 MiB of float32 per temporary).


@dataclasses.dataclass(frozen=True)
class AuditConfig:
  """How near counts as a duplicate (the audit's flags)."""
  hash_bits: int = option(10, "perceptual near-duplicates: pHash and dHash (64 bits each) both "
                              "differ in at most this many bits; -1 turns the check off",
                          metavar="BITS")
  embeddings: bool = option(False, "also compare the frozen vision encoder's pooled image "
                                   "embeddings (loads --model; cached under cache/features/)")
  cosine: float = option(0.97, "embedding near-duplicates: cosine similarity at least this")

  def __post_init__(self):
    if not -1 <= self.hash_bits < HASH_BITS:
      raise UserError(f"--hash-bits {self.hash_bits}: expected -1 (off) or 0..{HASH_BITS - 1}")
    if not -1.0 <= self.cosine <= 1.0:
      raise UserError(f"--cosine {self.cosine}: expected a cosine similarity in [-1, 1]")

  @property
  def methods(self) -> tuple[str, ...]:
    return ("sha256",) + (("phash",) if self.hash_bits >= 0 else ()) + (
        ("embedding",) if self.embeddings else ())


@dataclasses.dataclass(frozen=True)
class Item:
  """One row of one named set."""
  set: str
  example: Example


@dataclasses.dataclass(frozen=True)
class Pair:
  """Items a and b (indices into Audit.items, a < b) matched by `method`.

  distance: 0 for sha256; for phash the larger of the pHash and dHash bit
  differences; for embedding the cosine similarity (higher is closer).
  """
  a: int
  b: int
  method: str
  distance: float


@dataclasses.dataclass(frozen=True)
class Group:
  """Items that must stay on one side: a connected component of the pairs."""
  members: tuple[int, ...]  # Item indices, ascending.
  methods: tuple[str, ...]  # The methods whose pairs joined it, in METHODS order.
  sets: tuple[str, ...]  # The set names it touches, in input order.
  conflict: bool  # Both labels among the members.

  @property
  def leak(self) -> bool:
    return len(self.sets) > 1


@dataclasses.dataclass(frozen=True)
class Audit:
  """What `find` saw: the items, every matching pair and the groups they form."""
  items: tuple[Item, ...]
  config: AuditConfig
  pairs: tuple[Pair, ...]
  groups: tuple[Group, ...]
  unreadable: tuple[tuple[int, str], ...] = ()  # (item, why): skipped by phash.
  flat: tuple[int, ...] = ()  # Items too flat for the perceptual hashes.
  # The closest pair that did not count (for choosing thresholds): phash bits, cosine.
  nearest_bits: int | None = None
  nearest_cosine: float | None = None

  @property
  def leaks(self) -> list[Group]:
    return [g for g in self.groups if g.leak]

  @property
  def conflicts(self) -> list[Group]:
    return [g for g in self.groups if g.conflict]

  def group_ids(self) -> np.ndarray:
    """(N,) int: one id per item, equal for items of one group (what the splits take)."""
    ids = np.arange(len(self.items))
    for g in self.groups:
      ids[list(g.members)] = g.members[0]
    return ids

  def pairs_of(self, group: Group) -> list[Pair]:
    members = set(group.members)
    return [p for p in self.pairs if p.a in members]

  def kept_line(self) -> str:
    """The one line the splits print: how many groups were kept together."""
    checked = ", ".join(self.config.methods)
    if not self.groups:
      return f"duplicates: none found (checked by {checked})"
    n = sum(len(g.members) for g in self.groups)
    by = ", ".join(f"{m} {sum(m in g.methods for g in self.groups)}" for m in self.config.methods)
    conflicts = (f"; {len(self.conflicts)} with both labels (see 12-audit.py)"
                 if self.conflicts else "")
    return (f"duplicates: {len(self.groups)} group(s) of {n} images kept together "
            f"(found by {by}){conflicts}")


def flatten(sets: Mapping[str, Sequence[Example]]) -> list[Item]:
  """The items of named sets, in order."""
  return [Item(name, e) for name, exs in sets.items() for e in exs]


def _digests(items: Sequence[Item], bar) -> list[str]:
  """sha256 of each item's image, each file read once."""
  seen: dict[str, str] = {}
  out = []
  for it in items:
    path = it.example.image
    if path not in seen:
      try:
        seen[path] = files.sha256(path)
      except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    out.append(seen[path])
    bar.update(1)
  return out


def perceptual_hash(rgb: np.ndarray) -> np.ndarray | None:
  """(128,) bool: pHash then dHash of a uint8 RGB image; None for a nearly flat image.

  The image is first averaged down to 128 x 128 (the hashes look at 32 x 32 and
  9 x 8), so a large ad costs one cheap resize instead of three.
  """
  img = Image.fromarray(rgb).convert("L").resize((128, 128), Image.BOX)
  if np.asarray(img.resize((32, 32), Image.LANCZOS), np.float64).std() < _FLAT_STD:
    return None
  return np.concatenate([imagehash.phash(img).hash.ravel(), imagehash.dhash(img).hash.ravel()])


def _hash_file(path: str) -> np.ndarray | None | str:
  """perceptual_hash of an image file, or why it cannot be decoded."""
  try:
    return perceptual_hash(images.decode_rgb(path))
  except UserError as e:
    return str(e)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Bit differences between the rows of two 0/1 float32 matrices: |a| + |b| - 2 a.b (BLAS)."""
  return a.sum(1)[:, None] + b.sum(1)[None, :] - 2 * (a @ b.T)


def _close(score: Callable[[int, int], np.ndarray], n: int, hit: Callable[[np.ndarray], np.ndarray],
           nearest: Callable[[np.ndarray], float]) -> tuple[list[tuple[int, int, float]], float | None]:
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


def _close_hashes(h: np.ndarray, limit: int) -> tuple[list[tuple[int, int, float]], int | None]:
  """Pairs (i < j) of rows of `h` whose pHash and dHash halves both differ in <= limit bits.

  Also returns the smallest such difference above the limit (None: no other pair).
  """
  p, d = (np.ascontiguousarray(h[:, k:k + HASH_BITS], np.float32) for k in (0, HASH_BITS))
  pairs, near = _close(lambda s, e: np.maximum(_hamming(p[s:e], p[s:]), _hamming(d[s:e], d[s:])),
                       len(h), lambda v: v <= limit, np.min)
  return pairs, None if near is None else int(near)


def _close_vectors(x: np.ndarray, cosine: float) -> tuple[list[tuple[int, int, float]], float | None]:
  """Pairs (i < j) of rows of `x` with cosine similarity >= cosine, and the closest other one."""
  x = np.asarray(x, np.float32)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return _close(lambda s, e: x[s:e] @ x[s:].T, len(x), lambda v: v >= cosine, np.max)


def _groups(items: Sequence[Item], pairs: Sequence[Pair]) -> list[Group]:
  """Connected components with two or more items, ordered by their first item."""
  n = len(items)
  if not pairs:
    return []
  a = np.array([p.a for p in pairs])
  b = np.array([p.b for p in pairs])
  graph = coo_matrix((np.ones(len(pairs)), (a, b)), shape=(n, n))
  _, label = connected_components(graph, directed=False)
  by_label: dict[int, list[int]] = {}
  for i in range(n):
    by_label.setdefault(int(label[i]), []).append(i)
  methods: dict[int, set[str]] = {}
  for p in pairs:
    methods.setdefault(int(label[p.a]), set()).add(p.method)
  set_order = list(dict.fromkeys(it.set for it in items))
  out = []
  for lab, members in by_label.items():
    if len(members) < 2:
      continue
    sets = {items[i].set for i in members}
    labels = {items[i].example.label for i in members}
    out.append(Group(tuple(members), tuple(m for m in METHODS if m in methods[lab]),
                     tuple(s for s in set_order if s in sets), len(labels) > 1))
  return sorted(out, key=lambda g: g.members[0])


def _exact_pairs(items: Sequence[Item]) -> tuple[list[Pair], list[int]]:
  """Pairs of items with the same file content, and the first item of each content (reps)."""
  with progress.bar(len(items), "sha256", "img") as bar:
    digests = _digests(items, bar)
  first: dict[str, int] = {}
  pairs = []
  for i, d in enumerate(digests):
    if d in first:
      pairs.append(Pair(first[d], i, "sha256", 0.0))
    else:
      first[d] = i
  return pairs, list(first.values())


def _hash_pairs(items: Sequence[Item], reps: Sequence[int], bits: int):
  """(phash pairs, unreadable [(item, why)], flat items, nearest other bits) over `reps`."""
  hashed, rows, unreadable, flat = [], [], [], []
  # Threads: Pillow decodes without holding the GIL, so the cores share the decoding.
  with progress.bar(len(reps), "perceptual hashes", "img") as bar, \
      ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    for i, h in zip(reps, pool.map(_hash_file, [items[i].example.image for i in reps])):
      bar.update(1)
      if isinstance(h, str):
        unreadable.append((i, h))
      elif h is None:
        flat.append(i)
      else:
        hashed.append(i)
        rows.append(h)
  close, nearest = _close_hashes(np.array(rows, bool).reshape(len(rows), 2 * HASH_BITS), bits)
  pairs = [Pair(hashed[i], hashed[j], "phash", d) for i, j, d in close]
  return pairs, unreadable, flat, nearest


def find(sets: Mapping[str, Sequence[Example]], config: AuditConfig = AuditConfig(),
         embed: Callable[[list[Example]], np.ndarray] | None = None) -> Audit:
  """Duplicates within and across the named sets by config's methods (module docstring).

  embed: examples -> (N, D) embeddings (e.g. `FeatureCache.pooled`), needed when
  config.embeddings. Each file content is decoded and embedded once. An image
  that cannot be decoded is reported in `unreadable` by the phash check and left
  out of the embeddings; with phash off, embedding it fails (UserError).
  """
  if config.embeddings and embed is None:
    raise ValueError("config.embeddings needs an embed function")
  items = flatten(sets)
  pairs, reps = _exact_pairs(items)
  unreadable, flat, bits, cos = [], [], None, None
  if config.hash_bits >= 0:
    found, unreadable, flat, bits = _hash_pairs(items, reps, config.hash_bits)
    pairs += found
  if config.embeddings:
    bad = {i for i, _ in unreadable}
    seen = [i for i in reps if i not in bad]
    x = np.asarray(embed([items[i].example for i in seen])) if seen else np.zeros((0, 1))
    close, cos = _close_vectors(x, config.cosine)
    pairs += [Pair(seen[i], seen[j], "embedding", s) for i, j, s in close]
  pairs.sort(key=lambda p: (p.a, p.b, METHODS.index(p.method)))
  return Audit(tuple(items), config, tuple(pairs), tuple(_groups(items, pairs)),
               tuple(unreadable), tuple(flat), bits, cos)


def describe(pair: Pair) -> str:
  """'sha256', 'phash 4 bits' or 'embedding 0.9912'."""
  if pair.method == "phash":
    return f"phash {pair.distance:.0f} bits"
  if pair.method == "embedding":
    return f"embedding {pair.distance:.4f}"
  return pair.method


def _where(it: Item) -> str:
  return f"{files.shown(it.example.source)}:{it.example.line}"


def _group_lines(audit: Audit, n: int, g: Group) -> list[str]:
  kind = f"leak across {'/'.join(g.sets)}" if g.leak else f"within {g.sets[0]}"
  head = (f"group {n}: {len(g.members)} images, {kind}, found by {', '.join(g.methods)}"
          f"{'; labels disagree' if g.conflict else ''}")
  width = max(len(audit.items[i].set) for i in g.members)
  rows = [f"  #{k} {audit.items[i].set:<{width}}  {audit.items[i].example.suffix:<3}  "
          f"{audit.items[i].example.raw_image}  ({_where(audit.items[i])})"
          for k, i in enumerate(g.members, 1)]
  pos = {i: k for k, i in enumerate(g.members, 1)}
  links = "; ".join(f"#{pos[p.a]}-#{pos[p.b]} {describe(p)}" for p in audit.pairs_of(g))
  return [head] + rows + [f"  pairs: {links}"]


def report(audit: Audit, limit: int | None = None) -> list[str]:
  """The audit as text lines: what was checked, the groups, and a closing count.

  Leaks come first, then label conflicts, then duplicates within a set; at most
  `limit` groups are shown (None: all). Numbers are positions in audit.groups.
  """
  c = audit.config
  sizes = ", ".join(f"{name} {n}" for name, n in _set_sizes(audit).items())
  how = ", ".join({"sha256": "sha256", "phash": f"phash (<= {c.hash_bits} bits)",
                   "embedding": f"embedding (cosine >= {c.cosine:g})"}[m] for m in c.methods)
  out = [f"audit: {len(audit.items)} images ({sizes}); checked by {how}"]
  order = sorted(range(len(audit.groups)),
                 key=lambda n: (not audit.groups[n].leak, not audit.groups[n].conflict))
  for n in order[:limit]:
    out += _group_lines(audit, n + 1, audit.groups[n])
  if limit is not None and len(order) > limit:
    out.append(f"... and {len(order) - limit} more group(s) (the HTML page shows all)")
  out += [f"unreadable, skipped by phash: {audit.items[i].example.raw_image} "
          f"({_where(audit.items[i])}): {why}" for i, why in audit.unreadable]
  if audit.flat:
    out.append(f"{len(audit.flat)} nearly flat image(s) left to sha256 and embedding")
  near = [f"phash {audit.nearest_bits} bits" if audit.nearest_bits is not None else "",
          f"embedding {audit.nearest_cosine:.4f}" if audit.nearest_cosine is not None else ""]
  if any(near):
    out.append(f"closest pair not counted: {', '.join(x for x in near if x)}")
  n_in = sum(len(g.members) for g in audit.groups)
  out.append(f"result: {len(audit.groups)} group(s) of {n_in} images: {len(audit.leaks)} "
             f"leak(s) across sets, {len(audit.groups) - len(audit.leaks)} within a set, "
             f"{len(audit.conflicts)} label conflict(s)")
  return out


def _set_sizes(audit: Audit) -> dict[str, int]:
  sizes: dict[str, int] = {}
  for it in audit.items:
    sizes[it.set] = sizes.get(it.set, 0) + 1
  return sizes
