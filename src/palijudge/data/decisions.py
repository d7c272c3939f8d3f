"""Your decisions on pairs of images: the same ad (confirm) or different ads (dismiss).

The duplicate audit (`audit`) is sure of some pairs and unsure of others (a
"possible duplicate"). A person settles those in a small TSV file that every
later audit and split reads (`12-audit.py`, `02-shuffle_data.py`, by default
dataset/audit-decisions.tsv):

  # decision  image  image  [note]
  confirm	images/OK_0012.png	images/OK_0340.jpg
  dismiss	images/t03-ad1.png	images/t03-ad2.png	same template, another product

Cells are separated by tabs, or by spaces when no image path holds one. Images
are written as in the dataset files (relative to the dataset root, or absolute)
and matched by the file they name, so one file serves the whole
dataset, its splits and its folds; pairs naming images outside the audited
sets are ignored. Blank lines and lines starting with # are skipped. The
audit prints, for each possible duplicate, the two lines to choose from.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

from palijudge.data import examples
from palijudge.errors import UserError, where

DECISIONS = ("confirm", "dismiss")
FILE_NAME = "audit-decisions.tsv"  # In the project's dataset/ folder.


@dataclasses.dataclass(frozen=True)
class Decisions:
  """decision per unordered pair of resolved image paths, and where it was read."""
  by_pair: Mapping[frozenset, str]
  path: str | None = None

  def of(self, a: str, b: str) -> str | None:
    """confirm, dismiss or None for the images at resolved paths a and b."""
    return self.by_pair.get(frozenset((os.path.realpath(a), os.path.realpath(b))))

  def __len__(self) -> int:
    return len(self.by_pair)

  def among(self, images: Sequence[str], rep_of: Sequence[int]) -> dict[tuple[int, int], str]:
    """{(a, b): decision} over items whose resolved image paths are `images`.

    A decision applies to the first item of each image's content (rep_of[i]: the first item
    with item i's file content); pairs naming an image not among them are left out.
    """
    if not self.by_pair:  # No decisions file (the usual case): nothing to resolve.
      return {}
    first: dict[str, int] = {}
    for i, path in enumerate(images):
      first.setdefault(os.path.realpath(path), rep_of[i])
    out = {}
    for key, decision in self.by_pair.items():
      ends = sorted({first[k] for k in key if k in first})
      if len(ends) == 2:  # Else an image audited elsewhere, or two names of one content.
        out[(ends[0], ends[1])] = decision
    return out


NONE = Decisions({})


def _resolve(raw: str, root: str) -> str:
  return os.path.realpath(raw if os.path.isabs(raw) else os.path.join(root, raw))


def read(path: str | os.PathLike, root: str | os.PathLike) -> Decisions:
  """The decisions in `path`; image paths resolve against the dataset `root`.

  A later line about the same pair wins (append to change your mind).
  """
  path, root = os.fspath(path), os.path.realpath(os.fspath(root))
  out: dict[frozenset, str] = {}
  for line, text in examples.read_lines(path):
    if text.lstrip().startswith("#"):
      continue
    cells = text.split("\t") if "\t" in text else text.split()
    if len(cells) < 3 or cells[0].strip() not in DECISIONS or not all(
        c.strip() for c in cells[1:3]):
      raise UserError(f"{where(path, line)}: expected 'confirm' or 'dismiss', a tab, an image, "
                      f"a tab, another image (and optionally a tab and a note; spaces do "
                      f"instead of tabs when no path holds one)")
    a, b = (_resolve(c.strip(), root) for c in cells[1:3])
    if a == b:
      raise UserError(f"{where(path, line)}: both images are {cells[1].strip()!r}")
    out[frozenset((a, b))] = cells[0].strip()
  return Decisions(out, path)


def line(decision: str, a: str, b: str) -> str:
  """One line of the file (without the newline): what the audit suggests to paste."""
  return "\t".join((decision, a, b))
