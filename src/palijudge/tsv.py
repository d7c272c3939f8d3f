"""Plain tab-separated files: one header line of column names, then one row a line.

No quoting: a field may not contain a tab or a newline (writers refuse such
values instead of producing a file that reads back differently). Files are
UTF-8, with or without BOM; blank lines are skipped but counted, so line
numbers in errors match an editor's. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Iterable, Sequence

from palijudge.errors import UserError, where

_BOM = "\ufeff"


@dataclasses.dataclass(frozen=True)
class Table:
  """A parsed TSV: column names and (line, {column: value}) rows."""
  path: str
  columns: list[str]
  rows: list[tuple[int, dict[str, str]]]
  has_header: bool


def read_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
  """(1-based line, text) of every non-blank line; UserError for unreadable files."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found" if not os.path.exists(path) else f"{path}: not a file")
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


def atomic_write(path: str | os.PathLike, lines: Iterable[str]) -> None:
  """Writes `lines` to `path` through a temp file in the same folder + rename."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
      os.fchmod(f.fileno(), 0o644)
      f.writelines(lines)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
