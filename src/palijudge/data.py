"""Datasets: JSON Lines or TSV files of {"image", "prefix", "suffix"} rows.

Each non-blank line of a `.jsonl` dataset file is one example, e.g.
  {"image": "img/001.jpg", "prefix": "Is this ad appropriate?", "suffix": "yes"}
A `.tsv` dataset has a header line naming its columns: `image` and `label`
(or `suffix`) are required, `prefix` and `id` optional, other columns (e.g.
`p_yes`, `pred` of a prediction file) ignored. A file without a header is
read as `image<TAB>label[<TAB>prefix]`. Relative image paths are resolved
against a dataset root, so split files written elsewhere (the writers keep
paths as written) stay valid. `read_examples` picks the format by suffix.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
  id: str = ""  # Optional row id from the file ("id" key / column).

  @property
  def key(self) -> str:
    """The row's id, or its line number: names the row in prediction files."""
    return self.id or str(self.line)


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
  row_id = row.get("id", "")
  if not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
    raise UserError(f"{at}: 'id' must be a string or an integer")
  return _example(raw_image, suffix, prefix, path, line, root, str(row_id))


def _example(raw_image: str, label_text: str, prefix: str, path: str, line: int, root: str,
             row_id: str = "") -> Example:
  label = normalize_label(label_text, path, line)
  image = _resolve_image(raw_image, root, path, line)
  return Example(image=image, label=label, prefix=prefix, suffix="yes" if label else "no",
                 source=path, line=line, raw_image=raw_image, id=row_id)


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
  """Writes examples as {"prefix", "suffix", "image"[, "id"]} lines, atomically.

  The image is written as it was read (raw_image), so the new file resolves
  against the same dataset root. A temp file in the target folder is renamed
  over the target, so readers never see a half-written file.
  """
  from palijudge import tsv

  def row(e: Example) -> dict[str, str]:
    return {"prefix": e.prefix, "suffix": e.suffix, "image": e.raw_image,
            **({"id": e.id} if e.id else {})}
  tsv.atomic_write(path, [json.dumps(row(e), ensure_ascii=False) + "\n" for e in examples])


TSV_COLUMNS = ("image", "label", "prefix")


def read_tsv(path: str | os.PathLike, root: str | os.PathLike | None = None
             ) -> list[Example]:
  """Reads a TSV dataset (see the module docstring); same rules as read_jsonl."""
  from palijudge import tsv
  path = os.fspath(path)
  root = os.path.realpath(os.path.dirname(os.path.abspath(path)) if root is None
                          else os.fspath(root))
  table = tsv.read_table(path, ("image",), positional=TSV_COLUMNS)
  label_col = "suffix" if "suffix" in table.columns and "label" not in table.columns else "label"
  tsv.require(table, ("image", label_col), "a dataset")
  out = [_example(r["image"], r.get(label_col, ""), r.get("prefix", ""), path, line, root,
                  r.get("id", "")) for line, r in table.rows]
  if not out:
    raise UserError(f"{path}: no examples")
  return out


def write_tsv(path: str | os.PathLike, examples: Sequence[Example]) -> None:
  """Writes examples as `[id] image label prefix` TSV with a header, atomically."""
  from palijudge import tsv
  with_id = any(e.id for e in examples)
  head = (("id",) if with_id else ()) + TSV_COLUMNS
  rows = [((e.id,) if with_id else ()) + (e.raw_image, e.suffix, e.prefix) for e in examples]
  tsv.atomic_write(path, [tsv.format_line(head)] + [tsv.format_line(r, path) for r in rows])


def _format_of(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext in (".jsonl", ".tsv"):
    return ext[1:]
  raise UserError(f"{path}: unknown dataset format {ext or '(no suffix)'!r}; "
                  f"expected .jsonl or .tsv")


def read_examples(path: str | os.PathLike, root: str | os.PathLike | None = None
                  ) -> list[Example]:
  """read_jsonl or read_tsv, by the file's suffix (.jsonl / .tsv)."""
  path = os.fspath(path)
  return (read_jsonl if _format_of(path) == "jsonl" else read_tsv)(path, root)


def write_examples(path: str | os.PathLike, examples: Sequence[Example]) -> None:
  """write_jsonl or write_tsv, by the file's suffix (.jsonl / .tsv)."""
  path = os.fspath(path)
  (write_jsonl if _format_of(path) == "jsonl" else write_tsv)(path, examples)


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
