"""The duplicate audit (`audit.Audit`) as text: what `12-audit.py` prints.

Groups of duplicates come first (leaks, then label conflicts, then within a
set), then the possible duplicates (across sets first), each with the two
lines of the decisions file to choose from, then what was left out and a
closing count.
"""

from __future__ import annotations

from typing import Sequence

from palijudge import files
from palijudge.data import decisions as decisions_lib
from palijudge.data.audit import COLOUR, Audit, Group, Item, Pair


def describe(pair: Pair) -> str:
  """'sha256', 'pixels: mirrored, cropped 5 %, structure 0.12, colour 0.02', ..."""
  if pair.method == "sha256":
    return "sha256"
  parts = []
  lk = pair.likeness
  if lk is not None:
    how = (["mirrored"] if lk.mirrored else []) + (
        [f"cropped {lk.crop:.0%}"] if lk.crop >= 0.01 else [])
    parts.append(", ".join(how + [f"structure {lk.structure:.2f}", f"colour {lk.colour:.2f}",
                                  f"pHash {lk.bits} bits"]))
  if pair.cosine is not None:
    parts.append(f"embedding {pair.cosine:.4f}")
  head = {"pixels": "pixels", "embedding": "embedding", "confirmed": "confirmed by you"}
  return f"{head[pair.method]}: {'; '.join(parts)}" if parts else head[pair.method]


def _where(it: Item) -> str:
  return f"{files.shown(it.example.source)}:{it.example.line}"


def _rows(audit: Audit, members: Sequence[int]) -> list[str]:
  width = max(len(audit.items[i].set) for i in members)
  return [f"  #{k} {audit.items[i].set:<{width}}  {audit.items[i].example.suffix:<3}  "
          f"{audit.items[i].example.raw_image}  ({_where(audit.items[i])})"
          for k, i in enumerate(members, 1)]


def _group_lines(audit: Audit, n: int, g: Group) -> list[str]:
  kind = f"leak across {'/'.join(g.sets)}" if g.leak else f"within {g.sets[0]}"
  head = (f"group {n}: {len(g.members)} images, {kind}, found by {', '.join(g.methods)}"
          f"{'; labels disagree' if g.conflict else ''}")
  pos = {i: k for k, i in enumerate(g.members, 1)}
  links = "; ".join(f"#{pos[p.a]}-#{pos[p.b]} {describe(p)}" for p in audit.pairs_of(g))
  return [head] + _rows(audit, g.members) + [f"  pairs: {links}"]


def suggestion(audit: Audit, p: Pair) -> list[str]:
  """The two lines of the decisions file to choose from for a possible duplicate."""
  a, b = (audit.items[i].example.raw_image for i in (p.a, p.b))
  return [decisions_lib.line(d, a, b) for d in decisions_lib.DECISIONS]


def _possible_lines(audit: Audit, n: int, p: Pair) -> list[str]:
  a, b = audit.items[p.a], audit.items[p.b]
  kind = f"across {a.set}/{b.set}" if audit.across(p) else f"within {a.set}"
  confirm, dismiss = suggestion(audit, p)
  return ([f"possible {n}: 2 images, {kind}, {describe(p)}"] + _rows(audit, (p.a, p.b))
          + [f"  decide in {files.shown(audit.decisions_file)}: {confirm!r} or {dismiss!r}"])


def report(audit: Audit, limit: int | None = None) -> list[str]:
  """The audit as text lines: what was checked, the groups, the possible pairs, a count.

  Leaks come first, then label conflicts, then duplicates within a set, then the
  possible duplicates (across sets first); at most `limit` of each are shown
  (None: all). Numbers are positions in audit.groups and audit.possible.
  """
  c = audit.config
  sizes = ", ".join(f"{name} {n}" for name, n in _set_sizes(audit).items())
  how = {"sha256": "sha256",
         "pixels": f"pixels (pHash <= {c.hash_bits} bits, then duplicate: structure <= "
                   f"{c.duplicate:g} and colour <= {COLOUR:g}; possible: structure <= "
                   f"{c.possible:g})",
         "embedding": f"embedding (cosine >= {c.cosine:g})"}
  out = [f"audit: {len(audit.items)} images ({sizes}); checked by "
         f"{', '.join(how[m] for m in c.methods)}"]
  order = sorted(range(len(audit.groups)),
                 key=lambda n: (not audit.groups[n].leak, not audit.groups[n].conflict))
  for n in order[:limit]:
    out += _group_lines(audit, n + 1, audit.groups[n])
  if limit is not None and len(order) > limit:
    out.append(f"... and {len(order) - limit} more group(s) (the HTML page shows all)")
  maybe = audit.possible
  shown = sorted(range(len(maybe)), key=lambda n: not audit.across(maybe[n]))
  for n in shown[:limit]:
    out += _possible_lines(audit, n + 1, maybe[n])
  if limit is not None and len(shown) > limit:
    out.append(f"... and {len(shown) - limit} more possible pair(s) (the HTML page shows all)")
  out += [f"unreadable, left to sha256: {audit.items[i].example.raw_image} "
          f"({_where(audit.items[i])}): {why}" for i, why in audit.unreadable]
  if audit.flat:
    out.append(f"{len(audit.flat)} nearly flat image(s) left to sha256 and embedding")
  near = [f"pHash {audit.nearest_bits} bits" if audit.nearest_bits is not None else "",
          f"structure {audit.nearest_structure:.2f}" if audit.nearest_structure is not None
          else "",
          f"embedding {audit.nearest_cosine:.4f}" if audit.nearest_cosine is not None else ""]
  if any(near):
    out.append(f"closest pair not counted: {', '.join(x for x in near if x)}")
  return out + [_result_line(audit)]


def _result_line(audit: Audit) -> str:
  n_in = sum(len(g.members) for g in audit.groups)
  maybe = audit.possible
  decided = (f", {audit.dismissed} dismissed in {files.shown(audit.decisions_file)}"
             if audit.dismissed else "")
  return (f"result: {len(audit.groups)} group(s) of {n_in} images: {len(audit.leaks)} "
          f"leak(s) across sets, {len(audit.groups) - len(audit.leaks)} within a set, "
          f"{len(audit.conflicts)} label conflict(s); {len(maybe)} possible duplicate "
          f"pair(s), {sum(audit.across(p) for p in maybe)} across sets{decided}")


def _set_sizes(audit: Audit) -> dict[str, int]:
  sizes: dict[str, int] = {}
  for it in audit.items:
    sizes[it.set] = sizes.get(it.set, 0) + 1
  return sizes
