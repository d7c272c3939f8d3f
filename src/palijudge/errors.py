"""User-facing errors: one line, naming the file (and line) at fault.

Scripts catch `UserError` at the top (see `cli.run`) and print its message
alone, so a user never sees a traceback for bad input.
"""

from __future__ import annotations

import os


class UserError(Exception):
  """Bad input or configuration; the message is shown to the user as is."""


def where(path: str | os.PathLike, line: int | None = None) -> str:
  """`file:line` prefix for error messages (line numbers are 1-based)."""
  return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
