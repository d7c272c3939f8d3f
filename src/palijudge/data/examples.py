"""Datasets: JSON Lines or TSV files of {"image", "prefix", "suffix"} rows.

Each non-blank line of a `.jsonl` dataset file is one example, e.g.
  {"image": "img/001.jpg", "prefix": "Is this ad appropriate?", "suffix": "yes"}
A `.tsv` dataset has a header line naming its columns: `image` and `label`
(or `suffix`) are required, `prefix` and `id` optional, other columns (e.g.
`p_yes`, `pred` of a prediction file) ignored. A file without a header is
read as `image<TAB>label[<TAB>prefix]`. Relative image paths are resolved
against a dataset root, so split files written elsewhere (the writers keep
paths as written) stay valid. `read_examples` picks the format by suffix, or
by content for a file without one (the pieces Unix `split` writes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

from palijudge import files
from palijudge.configs import DEFAULT_PROMPT  # noqa: F401  (the prompt where a prefix is empty)
from palijudge.errors import UserError, where

_BOM = "\ufeff"


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


def parse_yes_no(text) -> bool | None:
  """The one yes/no parser: ' Yes ' -> True, 'no' -> False, anything else None."""
  value = text.strip().lower() if isinstance(text, str) else None
  return True if value == "yes" else False if value == "no" else None


def normalize_label(text: str, path: str | os.PathLike, line: int, what: str = "label") -> bool:
  """A label (or prediction) read from `path:line`; UserError unless yes or no."""
  value = parse_yes_no(text)
  if value is None:
    raise UserError(f"{where(path, line)}: unknown {what} {text!r} (expected yes or no)")
  return value


def _root(path: str, root: str | os.PathLike | None) -> str:
  """The dataset root (default: the file's folder), as a realpath."""
  return os.path.realpath(os.path.dirname(os.path.abspath(path)) if root is None
                          else os.fspath(root))


# --- Plain text lines and TSV tables -----------------------------------------
# No quoting: a TSV field may not contain a tab or a newline (writers refuse
# such values instead of producing a file that reads back differently). Files
# are UTF-8, with or without BOM; blank lines are skipped but counted, so line
# numbers in errors match an editor's.

def read_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
  """(1-based line, text) of every non-blank line; UserError for unreadable files."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found" if not os.path.exists(path) else f"{path}: not a file")
  files.note_input(path, "a data file")
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
  out = []
  for i, line in enumerate(raw.split(b"\n"), start=1):
    try:
      text = line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
      raise UserError(f"{where(path, i)}: not valid UTF-8") from None
    if i == 1 and text.startswith(_BOM):
      text = text[1:]
    if text.strip():
      out.append((i, text))
  return out


@dataclasses.dataclass(frozen=True)
class Table:
  """A parsed TSV: column names and (line, {column: value}) rows."""
  path: str
  columns: list[str]
  rows: list[tuple[int, dict[str, str]]]
  has_header: bool


def read_table(path: str | os.PathLike, header_names: Sequence[str],
               positional: Sequence[str] | None = None) -> Table:
  """Reads a TSV whose first line is a header naming one of `header_names`.

  Without such a header the file is read as headerless rows of the
  `positional` columns (trailing columns may be missing), or refused when
  `positional` is None. Every row must have as many fields as the header.
  """
  path = os.fspath(path)
  lines = read_lines(path)
  if not lines:
    raise UserError(f"{path}: no rows")
  first = [c.strip().lower() for c in lines[0][1].split("\t")]
  has_header = any(n in first for n in header_names)
  if not has_header and positional is None:
    raise UserError(f"{where(path, lines[0][0])}: missing header line (expected columns "
                    f"named {', '.join(header_names)})")
  columns = first if has_header else list(positional)
  if has_header and len(set(columns)) != len(columns):
    raise UserError(f"{where(path, lines[0][0])}: repeated column name in the header")
  rows = []
  for line, text in lines[1:] if has_header else lines:
    fields = text.split("\t")
    if len(fields) > len(columns) or (has_header and len(fields) != len(columns)):
      raise UserError(f"{where(path, line)}: {len(fields)} fields, expected {len(columns)} "
                      f"({', '.join(columns)})")
    rows.append((line, dict(zip(columns, fields))))
  return Table(path, columns, rows, has_header)


def require(table: Table, names: Sequence[str], what: str = "") -> None:
  """UserError naming the file and the missing columns, if any are missing."""
  missing = [n for n in names if n not in table.columns]
  if missing:
    have = ", ".join(table.columns)
    raise UserError(f"{table.path}: missing column(s) {', '.join(missing)}"
                    f"{' for ' + what if what else ''} (has: {have})")


def format_line(values: Iterable[object], path: str | os.PathLike = "") -> str:
  """One TSV line (with newline); a value holding a tab or newline is refused."""
  out = []
  for v in values:
    s = "" if v is None else str(v)
    if "\t" in s or "\n" in s or "\r" in s:
      raise UserError(f"{os.fspath(path) or 'TSV'}: cannot write {s[:40]!r}: it contains a "
                      f"tab or a newline")
    out.append(s)
  return "\t".join(out) + "\n"


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


def read_jsonl(path: str | os.PathLike, root: str | os.PathLike | None = None
               ) -> list[Example]:
  """Reads a dataset file; every image must exist.

  Relative image paths are resolved against `root` (default: the folder of
  the file) and may not leave it; absolute paths are taken as they are.
  UTF-8 with or without BOM. Blank lines are skipped but still counted, so
  reported line numbers match an editor's.
  """
  path = os.fspath(path)
  root = _root(path, root)
  examples = [_parse_line(text, path, line, root) for line, text in read_lines(path)]
  if not examples:
    raise UserError(f"{path}: no examples")
  return examples


def write_jsonl(path: str | os.PathLike, examples: Sequence[Example]) -> None:
  """Writes examples as {"prefix", "suffix", "image"[, "id"]} lines, atomically.

  The image is written as it was read (raw_image), so the new file resolves
  against the same dataset root. A temp file in the target folder is renamed
  over the target, so readers never see a half-written file.
  """

  def row(e: Example) -> dict[str, str]:
    return {"prefix": e.prefix, "suffix": e.suffix, "image": e.raw_image,
            **({"id": e.id} if e.id else {})}
  files.write_text(path, [json.dumps(row(e), ensure_ascii=False) + "\n" for e in examples])


TSV_COLUMNS = ("image", "label", "prefix")


def read_tsv(path: str | os.PathLike, root: str | os.PathLike | None = None
             ) -> list[Example]:
  """Reads a TSV dataset (see the module docstring); same rules as read_jsonl."""
  path = os.fspath(path)
  root = _root(path, root)
  table = read_table(path, ("image",), positional=TSV_COLUMNS)
  label_col = "suffix" if "suffix" in table.columns and "label" not in table.columns else "label"
  require(table, ("image", label_col), "a dataset")
  out = [_example(r["image"], r.get(label_col, ""), r.get("prefix", ""), path, line, root,
                  r.get("id", "")) for line, r in table.rows]
  if not out:
    raise UserError(f"{path}: no examples")
  return out


def write_tsv(path: str | os.PathLike, examples: Sequence[Example], header: bool = True) -> None:
  """Writes examples as `[id] image label prefix` TSV with a header, atomically; without
  `header`, as the original raw data: `image label[ prefix]` lines (see `raw_tsv_line`)."""
  if not header:
    files.write_text(path, [raw_tsv_line(e.raw_image, e.suffix, e.prefix, path)
                            for e in examples])
    return
  with_id = any(e.id for e in examples)
  head = (("id",) if with_id else ()) + TSV_COLUMNS
  rows = [((e.id,) if with_id else ()) + (e.raw_image, e.suffix, e.prefix) for e in examples]
  files.write_text(path, [format_line(head)] + [format_line(r, path) for r in rows])


def raw_tsv_line(image: str, label: str, prefix: str = "", path: str | os.PathLike = "") -> str:
  """One row of a headerless TSV, the original raw data's form: image, label, and the prefix
  only when there is one. Every line is a row, so `head -64` keeps 64 examples."""
  return format_line((image, label) + ((prefix,) if prefix else ()), path)


def format_of(path: str | os.PathLike, what: str = "dataset", sniff: bool = False) -> str:
  """"jsonl" or "tsv" from the suffix; with `sniff`, a file without one is judged by its content.

  Sniffing is for reading files such as Unix `split`'s pieces (xaa, xab, ...):
  a first line that is a JSON object means JSON Lines, one with a tab means TSV.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext in (".jsonl", ".tsv"):
    return ext[1:]
  if sniff and os.path.isfile(path):
    first = _first_line(path)
    if first.lstrip().startswith("{"):
      return "jsonl"
    if "\t" in first:
      return "tsv"
    raise UserError(f"{path}: no .jsonl or .tsv suffix, and its first line is neither a JSON "
                    f"object nor tab-separated: cannot tell the {what} format")
  raise UserError(f"{path}: unknown {what} format {ext or '(no suffix)'!r}; "
                  f"expected .jsonl or .tsv")


def _first_line(path: str) -> str:
  try:
    with open(path, "rb") as f:
      head = f.read(1 << 16)
  except OSError as e:
    raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
  for raw in head.split(b"\n"):
    text = raw.decode("utf-8", "replace").lstrip(_BOM)
    if text.strip():
      return text
  return ""


def read_examples(path: str | os.PathLike, root: str | os.PathLike | None = None
                  ) -> list[Example]:
  """read_jsonl or read_tsv, by the file's suffix (.jsonl / .tsv) or, without one, its content."""
  path = os.fspath(path)
  return (read_jsonl if format_of(path, sniff=True) == "jsonl" else read_tsv)(path, root)


def write_examples(path: str | os.PathLike, examples: Sequence[Example]) -> None:
  """write_jsonl or write_tsv, by the file's suffix (.jsonl / .tsv)."""
  path = os.fspath(path)
  (write_jsonl if format_of(path) == "jsonl" else write_tsv)(path, examples)
