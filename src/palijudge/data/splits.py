"""Splits: train/valid by a seeded shuffle, and K cross-validation folds on disk.

`split` is `02-shuffle_data.py -v N`: a deterministic shuffle by numpy's
default_rng(seed), optionally stratified (valid keeps the yes/no ratio as
closely as whole numbers allow). `write_folds` writes OUT/fold-1/{train,valid}.jsonl
... OUT/fold-K/ and OUT/folds.json (k, seed, stratify, counts); every example is
in exactly one valid file. `fold_paths` reads them back (`03-do_learn.py --cv`).

Records. A split is self-describing: `write_record` leaves dataset/NAME/split.json
beside its files, naming the folder its image paths resolve against (the root
`02-shuffle_data.py` read the data with) and the data file it came from. So
`-d NAME` alone finds the images wherever the data lay. `root_of` is the one
rule every script applies when no `--root` (`-i`) is given: a split's files
resolve against the root it recorded; a split without a record (made before
records, or by the original shell script) and any other file inside the
project's dataset/ folder, against dataset/; a file elsewhere, against its own
folder.

Groups. Both take an optional group id per example (`audit.Audit.group_ids`:
copies and near-duplicates of one image share an id) and keep each group on one
side: a group moves as one unit, placed where its first member falls in the
shuffle. Without groups, or when every example is alone, the output is exactly
what it was before groups existed (same seed, same files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from palijudge import files
from palijudge.data.examples import Example, write_jsonl
from palijudge.errors import UserError, where

MANIFEST = "folds.json"
RECORD = "split.json"


def _valid_quota(labels: np.ndarray, n_valid: int) -> dict[bool, int]:
  """Per-class validation counts keeping the class ratio (largest remainder).

  Each class gets floor(n_valid * share); the leftover slots go to the
  classes with the largest fractional parts, so every count is its exact
  share rounded down or up and the counts sum to n_valid.
  """
  n = len(labels)
  exact = {c: n_valid * int(np.sum(labels == c)) / n for c in (True, False)}
  quota = {c: int(np.floor(v)) for c, v in exact.items()}
  left = n_valid - sum(quota.values())
  for c in sorted(exact, key=lambda c: exact[c] - quota[c], reverse=True):
    if left > 0 and exact[c] > quota[c]:
      quota[c] += 1
      left -= 1
  return quota


def _units(order: np.ndarray, groups: Sequence[int] | None) -> list[list[int]]:
  """The shuffled order cut into units that move together.

  Without groups every example is its own unit; with groups a unit is a whole
  group, at the place of its first member in `order`, members in shuffled order.
  """
  if groups is None:
    return [[int(i)] for i in order]
  if len(groups) != len(order):
    raise ValueError(f"{len(groups)} group ids for {len(order)} examples")
  units: dict[int, list[int]] = {}  # Insertion order: the first member's place.
  for i in order:
    units.setdefault(int(groups[i]), []).append(int(i))
  return list(units.values())


def split(examples: Sequence[Example], n_valid: int, seed: int,
          stratify: bool = False, data_path: str | os.PathLike | None = None,
          groups: Sequence[int] | None = None) -> tuple[list[Example], list[Example]]:
  """Deterministic (train, valid) split with len(valid) == n_valid.

  Examples are shuffled with numpy's default_rng(seed); both lists keep the
  shuffled order. With `stratify`, valid gets each class in as close to the
  dataset's ratio as whole numbers allow. `data_path` names the dataset in
  error messages (default: the source of the first example). `groups` (one id
  per example) keeps each group on one side: valid takes whole groups, in
  shuffled order, while they fit, so it may come out smaller than n_valid.
  """
  n = len(examples)
  name = os.fspath(data_path) if data_path is not None else (
      examples[0].source if examples else "the dataset")
  if n_valid <= 0:
    raise UserError(f"-v {n_valid} must be at least 1 (validation examples"
                    f" taken from {name})")
  if n_valid >= n:
    raise UserError(f"-v {n_valid} is not smaller than the {n} examples"
                    f" in {name}")
  order = np.random.default_rng(seed).permutation(n)
  labels = np.array([e.label for e in examples], dtype=bool)
  room = _valid_quota(labels, n_valid) if stratify else {True: n_valid, False: n_valid}
  left = n_valid
  train, valid = [], []
  # Units in shuffled order go to valid while they fit (per class with stratify):
  # without groups this is the first n_valid of the shuffle, or its stratified pick.
  for unit in _units(order, groups):
    need = {c: int(np.sum(labels[unit] == c)) for c in (True, False)}
    if len(unit) <= left and all(need[c] <= room[c] for c in need):
      valid += unit
      left -= len(unit)
      room = {c: room[c] - need[c] for c in room}
    else:
      train += unit
  if not valid:
    raise UserError(f"-v {n_valid}: every group of duplicates in {name} is larger; "
                    f"ask for more validation examples")
  return [examples[i] for i in train], [examples[i] for i in valid]


def class_counts(examples: Sequence[Example]) -> dict[str, int]:
  """{"yes": number of positives, "no": number of negatives}."""
  yes = sum(1 for e in examples if e.label)
  return {"yes": yes, "no": len(examples) - yes}


def fold_name(i: int) -> str:
  """Folder of fold i (1-based): fold-1, fold-2, ..."""
  return f"fold-{i}"


def assign_folds(labels: Sequence[bool], k: int, seed: int, stratify: bool,
                 groups: Sequence[int] | None = None) -> np.ndarray:
  """fold index (0..k-1) of each example; sizes differ by at most one (without groups).

  Without stratify: a seeded permutation dealt round-robin. With stratify:
  the shuffled yes examples then the shuffled no examples, dealt round-robin,
  so each class is spread over the folds as evenly as possible too. With
  `groups`, whole groups are dealt (mostly-yes groups first under stratify,
  larger ones first within a class): each goes to the next fold, in round-robin
  order, holding the fewest of its class (with stratify), then the fewest
  examples. For single examples that rule is exactly the round-robin above.
  """
  y = np.asarray(labels, bool)
  order = np.random.default_rng(seed).permutation(len(y))
  units = _units(order, groups)
  major = [2 * int(np.sum(y[u])) >= len(u) for u in units]  # The unit's majority class.
  phases = [[u for u, m in zip(units, major) if m], [u for u, m in zip(units, major) if not m]]
  if not stratify:
    phases = [units]
  folds = np.empty(len(y), np.int64)
  size, per_class = np.zeros(k, np.int64), {c: np.zeros(k, np.int64) for c in (True, False)}
  turn = 0
  for phase in phases:
    for unit in sorted(phase, key=len, reverse=True):  # Stable: ties keep shuffled order.
      c = 2 * int(np.sum(y[unit])) >= len(unit)
      cyclic = [(turn + j) % k for j in range(k)]
      f = min(cyclic, key=lambda f: (per_class[c][f] if stratify else 0, size[f]))
      folds[unit] = f
      size[f] += len(unit)
      per_class[True][f] += int(np.sum(y[unit]))
      per_class[False][f] += len(unit) - int(np.sum(y[unit]))
      turn = f + 1
  return folds


def write_folds(examples: Sequence[Example], k: int, seed: int, stratify: bool,
                out_dir: str | os.PathLike, groups: Sequence[int] | None = None
                ) -> list[tuple[Path, Path]]:
  """Writes K (train, valid) JSONL pairs under out_dir; returns their paths.

  `groups` (one id per example) keeps each group inside one fold (`assign_folds`).
  """
  n = len(examples)
  name = examples[0].source if examples else os.fspath(out_dir)
  if k < 2:
    raise UserError(f"{name}: --folds {k} must be at least 2")
  if k > n:
    raise UserError(f"{name}: --folds {k} is more than the {n} examples")
  n_units = n if groups is None else len({int(g) for g in groups})
  if k > n_units:
    raise UserError(f"{name}: --folds {k} is more than the {n_units} groups of duplicates "
                    f"(the {n} examples, each group kept in one fold)")
  folds = assign_folds([e.label for e in examples], k, seed, stratify, groups)
  out = Path(out_dir)
  pairs, counts = [], []
  for i in range(k):
    train = [e for e, f in zip(examples, folds) if f != i]
    valid = [e for e, f in zip(examples, folds) if f == i]
    tr, va = out / fold_name(i + 1) / "train.jsonl", out / fold_name(i + 1) / "valid.jsonl"
    write_jsonl(tr, train)
    write_jsonl(va, valid)
    pairs.append((tr, va))
    counts.append({"train": class_counts(train), "valid": class_counts(valid)})
  manifest = {"k": k, "seed": seed, "stratify": stratify, "examples": n, "folds": counts}
  files.write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
  return pairs


def fold_paths(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
  """The (train, valid) pairs that `write_folds` wrote under `folder`."""
  folder = Path(folder)
  manifest = folder / MANIFEST
  if not manifest.is_file():
    raise UserError(f"{where(manifest)}: no fold splits here; make them with "
                    f"`02-shuffle_data.py --folds K -n {folder.name}`")
  try:
    k = int(json.loads(manifest.read_text(encoding="utf-8"))["k"])
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"{where(manifest)}: unreadable fold manifest ({e})") from None
  pairs = [(folder / fold_name(i) / "train.jsonl", folder / fold_name(i) / "valid.jsonl")
           for i in range(1, k + 1)]
  for pair in pairs:
    for p in pair:
      if not p.is_file():
        raise UserError(f"{where(p)}: fold file missing (listed in {manifest})")
  return pairs


def write_record(folder: str | os.PathLike, root: str | os.PathLike, data: str | os.PathLike,
                 seed: int, **counts) -> Path:
  """folder/split.json: the image root and the data file, relative to the folder when they lie
  inside the dataset folder above it (the project moves as one), else absolute."""
  folder = Path(folder).resolve()
  dataset = folder.parent

  def place(path) -> str:
    path = os.path.realpath(path)
    return os.path.relpath(path, folder) if files.is_within(path, dataset) else path
  record = {"root": place(root), "data": place(data), "seed": seed, **counts}
  return files.write_text(folder / RECORD, json.dumps(record, indent=2) + "\n")


def recorded_root(folder: str | os.PathLike) -> str | None:
  """The image root folder/split.json names (a realpath), or None without a record."""
  path = Path(folder) / RECORD
  if not path.is_file():
    return None
  files.note_input(path, "the split's record")
  try:
    root = json.loads(path.read_text(encoding="utf-8"))["root"]
    if not isinstance(root, str) or not root:
      raise TypeError("root is not a path")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{where(path)}: unreadable split record ({e}); make the split again "
                    f"with 02-shuffle_data.py") from None
  resolved = os.path.realpath(os.path.join(folder, root))
  if not os.path.isdir(resolved):
    raise UserError(f"{where(path)}: the split's images were in {root!r}, which is no folder "
                    f"now ({resolved}); give --root the folder they are in")
  return resolved


def root_of(path: str | os.PathLike, dataset: str | os.PathLike) -> str:
  """The root a data file (or split folder) resolves its image paths against, without --root:
  see Records above. `dataset` is the project's dataset/ folder."""
  path, dataset = os.path.realpath(path), os.path.realpath(dataset)
  if not files.is_within(path, dataset):
    return path if os.path.isdir(path) else os.path.dirname(path)
  here = path if os.path.isdir(path) else os.path.dirname(path)
  while here != dataset and files.is_within(here, dataset):
    root = recorded_root(here)
    if root is not None:
      return root
    here = os.path.dirname(here)
  return dataset
