"""Duplicates and leaks: the same ad within and across sets, sure or possible.

Web ads repeat: one creative resized, re-encoded, cropped, mirrored, brightened
or recoloured. An image in both train and valid inflates every validation
number. Ads also share templates: another product and another text on the same
layout and palette, which is another example and must not be taken for a copy.
`find` looks within and across named sets (train, valid, test, extra, ...):

  sha256     the same file content (`files.sha256`): a duplicate.
  pixels     pairs whose pHash (of the image, its mirror and their centres)
             differ in at most `hash_bits` bits get a close look
             (`likeness.compare`: aligned for a mirror and a crop, then the
             worst block's structure and colour): structure <= `duplicate`
             and colour <= `COLOUR` is a duplicate, structure <= `possible` a
             possible duplicate.
  embedding  (`embeddings`) cosine similarity of the frozen vision encoder's
             pooled image embeddings at least `cosine`: the pair gets the close
             look too, and is at least a possible duplicate.
  decisions  the user's file (`decisions`): confirm makes a pair a duplicate,
             dismiss drops it (identical files stay duplicates).

Duplicates join into groups (the connected components of their pairs, scipy):
a group spanning two sets is a leak, one holding both labels a label conflict;
`Audit.group_ids` gives the splits (`splits.split`, `splits.write_folds`) one id
per example to keep each group on one side. Possible duplicates are listed pair
by pair for a person to decide; they neither join groups nor fail. The default
thresholds are calibrated on templated ads with planted edits (`audit_bench`,
`12-audit.py --benchmark`); `audit_report` writes the audit as text. Each
distinct image keeps a 128 px thumbnail while the audit runs (48 KB: half a
gigabyte for 10,000 images). Animated images are compared by their first
frame. No jax here: the embeddings come from the caller.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from palijudge import files, progress
from palijudge.data import decisions as decisions_lib
from palijudge.data import images, likeness
from palijudge.data.examples import Example
from palijudge.errors import UserError
from palijudge.options import option

METHODS = ("sha256", "pixels", "embedding", "confirmed")
DUPLICATE, POSSIBLE = "duplicate", "possible"
COLOUR = 0.10  # Worst block's error after one global colour map; above it never sure.
_THREADS = min(8, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class AuditConfig:
  """What counts as a duplicate or a possible one (the audit's flags)."""
  hash_bits: int = option(16, "pairs whose pHash (of the image, its mirror and their centres) "
                              "differ in at most this many bits get the close look; -1: only "
                              "identical files", metavar="BITS")
  duplicate: float = option(0.20, "close look: a pair whose worst block differs in structure by "
                                  "at most this (0-1; and colour at most 0.10) is a duplicate",
                            metavar="S")
  possible: float = option(0.35, "close look: up to this structure difference a pair is a "
                                 "possible duplicate (shown, never fails, not kept together)",
                           metavar="S")
  embeddings: bool = option(False, "also compare the frozen vision encoder's pooled image "
                                   "embeddings (loads --model; cached under cache/features/)")
  cosine: float = option(0.97, "embedding: cosine similarity at least this makes a pair at "
                               "least a possible duplicate")
  decisions: str | None = option(None, "your confirm/dismiss file (default: "
                                       "dataset/audit-decisions.tsv when it exists)",
                                 metavar="FILE")

  def __post_init__(self):
    if not -1 <= self.hash_bits < likeness.HASH_BITS:
      raise UserError(f"--hash-bits {self.hash_bits}: expected -1 (off) or "
                      f"0..{likeness.HASH_BITS - 1}")
    if not 0.0 <= self.duplicate <= self.possible <= 1.0:
      raise UserError(f"--duplicate {self.duplicate} and --possible {self.possible}: expected "
                      f"0 <= duplicate <= possible <= 1")
    if not -1.0 <= self.cosine <= 1.0:
      raise UserError(f"--cosine {self.cosine}: expected a cosine similarity in [-1, 1]")

  @property
  def methods(self) -> tuple[str, ...]:
    return ("sha256",) + (("pixels",) if self.hash_bits >= 0 else ()) + (
        ("embedding",) if self.embeddings else ())


@dataclasses.dataclass(frozen=True)
class Item:
  """One row of one named set."""
  set: str
  example: Example


@dataclasses.dataclass(frozen=True)
class Pair:
  """Items a and b (indices into Audit.items, a < b): a duplicate or a possible one.

  method: sha256, pixels (the close look decided), embedding (the encoder saw
  the same, the close look did not agree) or confirmed (your decisions file).
  """
  a: int
  b: int
  level: str  # DUPLICATE or POSSIBLE
  method: str
  likeness: likeness.Likeness | None = None
  cosine: float | None = None


@dataclasses.dataclass(frozen=True)
class Group:
  """Items that must stay on one side: a connected component of the duplicate pairs."""
  members: tuple[int, ...]  # Item indices, ascending.
  methods: tuple[str, ...]  # The methods whose pairs joined it, in METHODS order.
  sets: tuple[str, ...]  # The set names it touches, in input order.
  conflict: bool  # Both labels among the members.

  @property
  def leak(self) -> bool:
    return len(self.sets) > 1


@dataclasses.dataclass(frozen=True)
class Audit:
  """What `find` saw: the items, the pairs, the groups of duplicates and the possible ones."""
  items: tuple[Item, ...]
  config: AuditConfig
  pairs: tuple[Pair, ...]  # Duplicates (in groups) and possible duplicates.
  groups: tuple[Group, ...]
  unreadable: tuple[tuple[int, str], ...] = ()  # (item, why): left to sha256.
  flat: tuple[int, ...] = ()  # Items too flat for the close look.
  dismissed: int = 0  # Found pairs your decisions file dismissed.
  decisions_file: str = ""  # The decisions file read, or where one would be read.
  # The closest pair that did not count (to choose thresholds by): pHash bits, structure, cosine.
  nearest_bits: int | None = None
  nearest_structure: float | None = None
  nearest_cosine: float | None = None

  @property
  def leaks(self) -> list[Group]:
    return [g for g in self.groups if g.leak]

  @property
  def conflicts(self) -> list[Group]:
    return [g for g in self.groups if g.conflict]

  @functools.cached_property  # Read by each report line and the page; the audit is frozen.
  def possible(self) -> list[Pair]:
    """Possible duplicates whose items are not already in one group."""
    ids = self.group_ids()
    return [p for p in self.pairs if p.level == POSSIBLE and ids[p.a] != ids[p.b]]

  def across(self, pair: Pair) -> bool:
    return self.items[pair.a].set != self.items[pair.b].set

  def group_ids(self) -> np.ndarray:
    """(N,) int: one id per item, equal for items of one group (what the splits take)."""
    ids = np.arange(len(self.items))
    for g in self.groups:
      ids[list(g.members)] = g.members[0]
    return ids

  def pairs_of(self, group: Group) -> list[Pair]:
    members = set(group.members)
    return [p for p in self.pairs if p.level == DUPLICATE and p.a in members]

  def kept_line(self) -> str:
    """The one line the splits print: how many groups were kept together, what was not."""
    checked = ", ".join(self.config.methods)
    maybe = (f"; {len(self.possible)} possible duplicate pair(s) not kept together "
             f"(12-audit.py shows them; confirm or dismiss them in "
             f"{files.shown(self.decisions_file)})" if self.possible else "")
    if not self.groups:
      return f"duplicates: none found (checked by {checked}){maybe}"
    n = sum(len(g.members) for g in self.groups)
    used = [m for m in METHODS if any(m in g.methods for g in self.groups)]
    by = ", ".join(f"{m} {sum(m in g.methods for g in self.groups)}" for m in used)
    conflicts = (f"; {len(self.conflicts)} with both labels (see 12-audit.py)"
                 if self.conflicts else "")
    return (f"duplicates: {len(self.groups)} group(s) of {n} images kept together "
            f"(found by {by}){conflicts}{maybe}")


def flatten(sets: Mapping[str, Sequence[Example]]) -> list[Item]:
  """The items of named sets, in order."""
  return [Item(name, e) for name, exs in sets.items() for e in exs]


def _digests(items: Sequence[Item]) -> list[str]:
  """sha256 of each item's image, each file read once."""
  seen: dict[str, str] = {}
  out = []
  with progress.bar(len(items), "sha256", "img") as bar:
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


def _sign(path: str) -> likeness.Signature | None | str:
  """The signature of an image file (None: nearly flat), or why it cannot be decoded."""
  try:
    return likeness.signature(images.decode_rgb(path))
  except UserError as e:
    return str(e)


def _signatures(items: Sequence[Item], reps: Sequence[int]):
  """({rep: Signature}, unreadable [(item, why)], flat items)."""
  signed, unreadable, flat = {}, [], []
  # Threads: Pillow decodes without holding the GIL, so the cores share the decoding.
  with progress.bar(len(reps), "signatures", "img") as bar, ThreadPoolExecutor(_THREADS) as pool:
    for i, s in zip(reps, pool.map(_sign, [items[i].example.image for i in reps])):
      bar.update(1)
      if isinstance(s, str):
        unreadable.append((i, s))
      elif s is None:
        flat.append(i)
      else:
        signed[i] = s
  return signed, unreadable, flat


def _vectors(x: np.ndarray, cosine: float) -> tuple[list[tuple[int, int, float]], float | None]:
  """Pairs (i < j) of rows of `x` with cosine similarity >= cosine, and the closest other one."""
  x = np.asarray(x, np.float32)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return likeness.close(lambda s, e: x[s:e] @ x[s:].T, len(x), lambda v: v >= cosine, np.max)


def _decide(config: AuditConfig, lk: likeness.Likeness | None, cos: float | None
            ) -> tuple[str, str] | None:
  """(level, method) of a looked-at pair, or None when it does not count."""
  if lk is not None and lk.structure <= config.duplicate and lk.colour <= COLOUR:
    return DUPLICATE, "pixels"
  if lk is not None and lk.structure <= config.possible:
    return POSSIBLE, "pixels"
  if cos is not None:
    return POSSIBLE, "embedding"
  return None


def _looked(config: AuditConfig, items, reps, embed):
  """The close look over the candidates: (pairs, unreadable, flat, nearest bits/structure/cos)."""
  signed, unreadable, flat = _signatures(items, reps) if config.hash_bits >= 0 or \
      config.embeddings else ({}, [], [])
  keys = list(signed)
  cand: dict[tuple[int, int], float | None] = {}
  bits = cos = None
  if config.hash_bits >= 0 and keys:
    close, bits = likeness.candidates(np.stack([signed[i].hashes for i in keys]),
                                      config.hash_bits)
    cand = {(keys[i], keys[j]): None for i, j, _ in close}
  if config.embeddings:
    bad = {i for i, _ in unreadable}
    seen = [i for i in reps if i not in bad]
    x = np.asarray(embed([items[i].example for i in seen])) if seen else np.zeros((0, 1))
    close, cos = _vectors(x, config.cosine)
    cand.update({(seen[i], seen[j]): s for i, j, s in close})
  todo = sorted(cand)
  looks = lambda ij: (likeness.compare(signed[ij[0]], signed[ij[1]])  # noqa: E731
                      if ij[0] in signed and ij[1] in signed else None)
  pairs, near = [], []
  with progress.bar(len(todo), "close look", "pair") as bar, ThreadPoolExecutor(_THREADS) as pool:
    for (a, b), lk in zip(todo, pool.map(looks, todo)):
      bar.update(1)
      decided = _decide(config, lk, cand[(a, b)])
      if decided:
        pairs.append(Pair(a, b, *decided, lk, cand[(a, b)]))
      elif lk is not None:
        near.append(lk.structure)
  return pairs, unreadable, flat, bits, (min(near) if near else None), cos


def _groups(items: Sequence[Item], pairs: Sequence[Pair]) -> list[Group]:
  """Connected components of the duplicate pairs with two or more items, by first item."""
  pairs = [p for p in pairs if p.level == DUPLICATE]
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


def _apply(pairs: list[Pair], decided: dict[tuple[int, int], str]) -> tuple[list[Pair], int]:
  """Your decisions over the found pairs: (pairs, how many found ones were dismissed)."""
  found = {(p.a, p.b): p for p in pairs}
  dismissed = 0
  for ab, decision in decided.items():
    old = found.pop(ab, None)
    if decision == "confirm":
      found[ab] = Pair(*ab, DUPLICATE, "confirmed", old.likeness if old else None,
                       old.cosine if old else None)
    else:
      dismissed += old is not None
  return list(found.values()), dismissed


def find(sets: Mapping[str, Sequence[Example]], config: AuditConfig = AuditConfig(),
         embed: Callable[[list[Example]], np.ndarray] | None = None,
         decided: decisions_lib.Decisions = decisions_lib.NONE,
         decisions_file: str = decisions_lib.FILE_NAME) -> Audit:
  """Duplicates and possible duplicates within and across the named sets (module docstring).

  embed: examples -> (N, D) embeddings (e.g. `FeatureCache.pooled`), needed when
  config.embeddings. Each file content is decoded and embedded once. An image
  that cannot be decoded is reported in `unreadable` and left out of the
  embeddings. `decided`: the decisions file's content (`decisions.read`), read from
  `decisions_file` (or where one would be: the report names it).
  """
  if config.embeddings and embed is None:
    raise ValueError("config.embeddings needs an embed function")
  items = flatten(sets)
  digests = _digests(items)
  first: dict[str, int] = {}
  rep_of = [first.setdefault(d, i) for i, d in enumerate(digests)]
  exact = [Pair(r, i, DUPLICATE, "sha256") for i, r in enumerate(rep_of) if r != i]
  reps = list(first.values())
  looked, unreadable, flat, bits, structure, cos = _looked(config, items, reps, embed)
  pairs, dismissed = _apply(looked, decided.among([it.example.image for it in items], rep_of))
  pairs = sorted(exact + pairs, key=lambda p: (p.a, p.b))
  return Audit(tuple(items), config, tuple(pairs), tuple(_groups(items, pairs)),
               tuple(unreadable), tuple(flat), dismissed, decisions_file, bits, structure, cos)
