"""Datasets: JSON Lines files of {"image", "prefix", "suffix"} rows.

Each non-blank line of a dataset file is one example, e.g.
  {"image": "img/001.jpg", "prefix": "Is this ad appropriate?", "suffix": "yes"}
Relative image paths are resolved against a dataset root, so split files
written elsewhere (write_jsonl keeps paths as written) stay valid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Sequence

import numpy as np

from palijudge.errors import UserError, where

_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True)
class Example:
  """One labelled image.

  image: resolved absolute path; raw_image: the path as written in the file;
  label: True for "yes"; suffix: "yes"/"no"; source, line: where it came
  from (line is 1-based), for error messages.
  """
  image: str
  label: bool
  prefix: str
  suffix: str
  source: str
  line: int
  raw_image: str


def normalize_label(text: str, path: str | os.PathLike, line: int) -> bool:
  """Label text -> bool: ' Yes ' -> True, 'no' -> False, else UserError."""
  value = text.strip().lower() if isinstance(text, str) else None
  if value == "yes":
    return True
  if value == "no":
    return False
  raise UserError(f"{where(path, line)}: unknown label {text!r}"
                  " (expected yes or no)")


def _is_within(path: str, root: str) -> bool:
  """True when `path` is `root` or below it (both already realpath'd)."""
  return os.path.commonpath([path, root]) == root


def _resolve_image(raw: str, root: str, path: str, line: int) -> str:
  """Image string from the file -> existing absolute path (realpath)."""
  at = where(path, line)
  if not raw.strip():
    raise UserError(f"{at}: empty image path")
  if os.path.isabs(raw):
    resolved = os.path.realpath(raw)
  else:
    resolved = os.path.realpath(os.path.join(root, raw))
    if not _is_within(resolved, root):
      raise UserError(f"{at}: image path escapes the dataset root {root}:"
                      f" {raw!r}")
  if not os.path.isfile(resolved):
    raise UserError(f"{at}: image not found: {raw!r} (looked for {resolved})")
  return resolved


def _field(row: dict[str, Any], key: str, at: str, default: str | None = None
           ) -> str:
  """row[key] as a string; a missing required key or a non-string fails."""
  if key not in row:
    if default is not None:
      return default
    raise UserError(f"{at}: missing key {key!r}")
  value = row[key]
  if not isinstance(value, str):
    raise UserError(f"{at}: {key!r} must be a string, got"
                    f" {type(value).__name__}")
  return value


def _parse_line(text: str, path: str, line: int, root: str) -> Example:
  """One JSON line -> Example (root is already a realpath)."""
  at = where(path, line)
  try:
    row = json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"{at}: invalid JSON: {e.msg} (column {e.colno})") from None
  if not isinstance(row, dict):
    raise UserError(f"{at}: expected a JSON object, got"
                    f" {type(row).__name__}")
  raw_image = _field(row, "image", at)
  suffix = _field(row, "suffix", at)
  prefix = _field(row, "prefix", at, default="")
  label = normalize_label(suffix, path, line)
  image = _resolve_image(raw_image, root, path, line)
  return Example(image=image, label=label, prefix=prefix,
                 suffix="yes" if label else "no", source=path, line=line,
                 raw_image=raw_image)


def _read_bytes(path: str) -> bytes:
  """File content, or a UserError when it cannot be read."""
  if not os.path.exists(path):
    raise UserError(f"{path}: file not found")
  if not os.path.isfile(path):
    raise UserError(f"{path}: not a file")
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise UserError(f"{path}: cannot read: {e.strerror or e}") from None


def read_jsonl(path: str | os.PathLike, root: str | os.PathLike | None = None
               ) -> list[Example]:
  """Reads a dataset file; every image must exist.

  Relative image paths are resolved against `root` (default: the folder of
  the file) and may not leave it; absolute paths are taken as they are.
  UTF-8 with or without BOM. Blank lines are skipped but still counted, so
  reported line numbers match an editor's.
  """
  path = os.fspath(path)
  root = os.path.dirname(os.path.abspath(path)) if root is None else root
  root = os.path.realpath(os.fspath(root))
  data = _read_bytes(path)
  if data.startswith(_BOM):
    data = data[len(_BOM):]
  examples = []
  for line, raw in enumerate(data.split(b"\n"), start=1):
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      raise UserError(f"{where(path, line)}: not valid UTF-8") from None
    if text.strip():
      examples.append(_parse_line(text, path, line, root))
  if not examples:
    raise UserError(f"{path}: no examples")
  return examples


def write_jsonl(path: str | os.PathLike, examples: Sequence[Example]) -> None:
  """Writes examples as {"prefix", "suffix", "image"} lines, atomically.

  The image is written as it was read (raw_image), so the new file resolves
  against the same dataset root. A temp file in the target folder is renamed
  over the target, so readers never see a half-written file.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  lines = [json.dumps({"prefix": e.prefix, "suffix": e.suffix,
                       "image": e.raw_image}, ensure_ascii=False) + "\n"
           for e in examples]
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
      os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; datasets are shared
      f.writelines(lines)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


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


def split(examples: Sequence[Example], n_valid: int, seed: int,
          stratify: bool = False, data_path: str | os.PathLike | None = None
          ) -> tuple[list[Example], list[Example]]:
  """Deterministic (train, valid) split with len(valid) == n_valid.

  Examples are shuffled with numpy's default_rng(seed); both lists keep the
  shuffled order. With `stratify`, valid gets each class in as close to the
  dataset's ratio as whole numbers allow. `data_path` names the dataset in
  error messages (default: the source of the first example).
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
  if not stratify:
    return ([examples[i] for i in order[n_valid:]],
            [examples[i] for i in order[:n_valid]])
  labels = np.array([e.label for e in examples], dtype=bool)
  quota = _valid_quota(labels, n_valid)
  train, valid = [], []
  for i in order:
    c = bool(labels[i])
    if quota[c] > 0:
      quota[c] -= 1
      valid.append(examples[i])
    else:
      train.append(examples[i])
  return train, valid


def class_counts(examples: Sequence[Example]) -> dict[str, int]:
  """{"yes": number of positives, "no": number of negatives}."""
  yes = sum(1 for e in examples if e.label)
  return {"yes": yes, "no": len(examples) - yes}
