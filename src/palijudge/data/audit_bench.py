"""How well the duplicate audit separates edits of one ad from ads on one template.

`run` writes the templated ads of `templated.make_benchmark` for each seed to a
temporary folder, audits each set as `12-audit.py` would (default settings:
`audit.AuditConfig()`), and scores it against the truth; `table` prints the
result, `12-audit.py --benchmark` being the command:

  edits        for each planted edit: a duplicate when the audit put it in one
               group with its original, possible when only a possible pair
               links them, else missed;
  look-alikes  pairs of different ads on one template (another product and
               text; or the same product with other text): a false duplicate
               when in one group, possible when a possible pair links them;
  others       pairs of ads on different templates: a false duplicate when in
               one group;
  precision, recall  over pairs: of the pairs inside the groups, the share that
               show one ad; of the pairs that show one ad, the share inside a group;
  closest calls  the largest structure of an edit against its original, and the
               smallest of a pair of different ads the audit reported: the margin
               the thresholds have.

"before" is the audit this one replaced, kept here to measure against: the same
file (sha256), or pHash and dHash (64 bits each, of the grey image) both within
10 bits, one threshold, and no possible level.
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from typing import Sequence

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from palijudge import files
from palijudge.data import audit, examples, images, templated

LOOKALIKES = ("another product and text", "same product, other text")
_LEGACY_BITS = 10


@dataclasses.dataclass
class Count:
  """One line of the table: how many, and where the audits put them."""
  planted: int = 0
  before: int = 0  # Grouped by the former audit.
  duplicate: int = 0
  possible: int = 0  # Only a possible pair links them.


@dataclasses.dataclass
class Score:
  """Counts by kind, and the pair precision/recall of the groups, before and after."""
  seeds: tuple[int, ...]
  images: int
  edits: dict[str, Count]
  lookalikes: dict[str, Count]
  others: Count
  pairs: dict[str, list[int]]  # before/after: [grouped, grouped and same ad, same ad]
  # The closest calls, after: the largest structure of a planted edit against its original,
  # the smallest of a reported pair of different ads (None: no such pair reported).
  edit_structure: float = 0.0
  other_structure: float | None = None


def _legacy_hash(path: str) -> np.ndarray | None:
  """pHash then dHash of the grey image, as the former audit took them (None: nearly flat)."""
  img = Image.fromarray(images.decode_rgb(path)).convert("L").resize((128, 128), Image.BOX)
  if np.asarray(img.resize((32, 32), Image.LANCZOS), np.float64).std() < 4.0:
    return None
  return np.concatenate([imagehash.phash(img).hash.ravel(), imagehash.dhash(img).hash.ravel()])


def legacy_ids(rows: Sequence[examples.Example]) -> np.ndarray:
  """One id per row, equal within a group of the former audit (sha256, or both hashes <= 10)."""
  n = len(rows)
  digests = [files.sha256(r.image) for r in rows]
  hashes = [_legacy_hash(r.image) for r in rows]
  edges = []
  for i, j in itertools.combinations(range(n), 2):
    near = hashes[i] is not None and hashes[j] is not None and max(
        np.sum(hashes[i][:64] != hashes[j][:64]),
        np.sum(hashes[i][64:] != hashes[j][64:])) <= _LEGACY_BITS
    if near or digests[i] == digests[j]:
      edges.append((i, j))
  if not edges:
    return np.arange(n)
  a, b = np.array(edges).T
  return connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)),
                              directed=False)[1]


def _kind(truth: templated.Truth, i: int, j: int) -> str | None:
  """Which look-alike the pair (i, j) of different ads is; None: other templates."""
  ri, rj = truth.rows[i], truth.rows[j]
  if ri.template != rj.template:
    return None
  return LOOKALIKES[1] if ri.product == rj.product else LOOKALIKES[0]


def _score_one(truth: templated.Truth, found: audit.Audit, before: np.ndarray, s: Score) -> None:
  ids = found.group_ids()
  maybe = {frozenset((ids[p.a], ids[p.b])) for p in found.possible}
  for i, j in itertools.combinations(range(len(truth.rows)), 2):
    same = truth.same_ad(i, j)
    for name, grouped in (("before", before[i] == before[j]), ("after", ids[i] == ids[j])):
      s.pairs[name][0] += grouped
      s.pairs[name][1] += grouped and same
      s.pairs[name][2] += same
    if same:
      edit = truth.rows[j].edit if truth.rows[j].ad == i else None
      count = s.edits.get(edit) if edit else None
    else:
      kind = _kind(truth, i, j)
      count = s.lookalikes[kind] if kind else s.others
    if count is None:
      continue
    count.planted += 1
    count.before += bool(before[i] == before[j])
    count.duplicate += bool(ids[i] == ids[j])
    count.possible += ids[i] != ids[j] and frozenset((ids[i], ids[j])) in maybe


def _closest(truth: templated.Truth, found: audit.Audit, s: Score) -> None:
  for p in found.pairs:
    if p.likeness is None:
      continue
    x = p.likeness.structure
    if truth.same_ad(p.a, p.b) and truth.rows[p.b].ad == p.a:
      s.edit_structure = max(s.edit_structure, x)
    elif not truth.same_ad(p.a, p.b):
      s.other_structure = x if s.other_structure is None else min(s.other_structure, x)


def run(seeds: Sequence[int], config: audit.AuditConfig = audit.AuditConfig(), **size) -> Score:
  """The audit and the former one on the benchmark of each seed (module docstring); `size`
  goes to `templated.make_benchmark` (templates, ads_per_template, per_kind)."""
  s = Score(tuple(seeds), 0, {k: Count() for k in templated.EDITS},
            {k: Count() for k in LOOKALIKES}, Count(),
            {"before": [0, 0, 0], "after": [0, 0, 0]})
  for seed in seeds:
    with tempfile.TemporaryDirectory(prefix="palijudge-audit-bench-") as tmp:
      truth = templated.make_benchmark(tmp, seed=seed, **size)
      rows = examples.read_jsonl(truth.data)
      found = audit.find({"ads": rows}, config)
      _score_one(truth, found, legacy_ids(rows), s)
      _closest(truth, found, s)
      s.images += len(rows)
  return s


def _ratio(a: int, b: int) -> str:
  return f"{a / b:.2f}" if b else "n/a"


def table(s: Score, config: audit.AuditConfig = audit.AuditConfig()) -> list[str]:
  """The score as text: the operating point, then a Markdown table."""
  c = config
  seeds = f"{s.seeds[0]}-{s.seeds[-1]}" if len(s.seeds) > 1 else str(s.seeds[0])
  out = [f"templated ads, seeds {seeds}: {s.images} images "
         f"({len(s.seeds)} x {s.images // max(1, len(s.seeds))})",
         f"operating point: pHash <= {c.hash_bits} bits, then duplicate: structure <= "
         f"{c.duplicate:g} and colour <= {audit.COLOUR:g}; possible: structure <= {c.possible:g}",
         "", "| pairs | planted | before: found | after: duplicate | after: possible "
         "| after: missed |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for kind, n in s.edits.items():
    out.append(f"| edit: {kind} | {n.planted} | {n.before} | {n.duplicate} | {n.possible} | "
               f"{n.planted - n.duplicate - n.possible} |")
  for kind, n in [*s.lookalikes.items(), ("ads on other templates", s.others)]:
    label = kind if kind.startswith("ads") else f"look-alike: {kind}"
    out.append(f"| {label} | {n.planted} | {n.before} false | {n.duplicate} false | "
               f"{n.possible} | |")
  for name, k in (("precision", 0), ("recall", 2)):
    vals = [_ratio(s.pairs[w][1], s.pairs[w][k]) for w in ("before", "after")]
    out.append(f"| {name} (pairs) | | {vals[0]} | {vals[1]} | | |")
  other = ("none reported" if s.other_structure is None else
           f"{s.other_structure:.2f}")
  return out + ["", f"closest calls: the least alike planted edit, structure "
                    f"{s.edit_structure:.2f}; the most alike pair of different ads reported, "
                    f"{other}"]
