"""Progress bars on stderr for every loop longer than a few seconds (tqdm).

One mechanism for training steps, evaluation sets, batch inference and
embedding passes: a bar with count, rate and ETA on stderr, so the step
lines and Result blocks on stdout stay as they are, and piping stdout to a
file still shows the bar on the terminal. Lines printed while a bar is on
screen go through `write`, which clears the bar first and redraws it after.

Whether bars show is one process-wide choice made by the scripts'
`--progress` flag (cli): "auto" (only when stderr is a terminal, tqdm's own
rule, redrawn at most twice a second), "always" (every update drawn, for logs)
or "never". Bars are off by default for library callers
that never set it: "auto".
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable

from tqdm import tqdm

MODES = ("auto", "always", "never")
_mode = "auto"


def set_mode(mode: str) -> None:
  """Chosen once per process by the scripts' --progress flag."""
  global _mode
  if mode not in MODES:
    raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
  _mode = mode


def _disabled() -> bool | None:
  if _mode == "never" or not _first_process():
    return True
  return None if _mode == "auto" else False  # None: tqdm shows it only on a terminal.


def _first_process() -> bool:
  """In a multi-process run only process 0 shows bars (jax only if the caller imported it)."""
  jax = sys.modules.get("jax")
  try:
    return jax is None or jax.process_index() == 0
  except Exception:  # noqa: BLE001 - before initialisation or without a backend: one process.
    return True


def bar(total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
        iterable: Iterable | None = None, enabled: bool = True, unit_scale: bool = False
        ) -> tqdm:
  """A bar on stderr with count, rate and ETA; closes itself when used as a context.
  `unit_scale`: counts shown as k/M/G (bytes of a download)."""
  return tqdm(iterable, total=total, desc=desc or None, unit=unit, initial=initial,
              unit_scale=unit_scale,
              file=sys.stderr, disable=_disabled() if enabled else True,
              dynamic_ncols=True, leave=False,
              mininterval=0 if _mode == "always" else 0.5, smoothing=0.1)


def write(log: Callable[[str], None], line: str) -> None:
  """`log(line)` with any bar on screen cleared first and redrawn after."""
  with tqdm.external_write_mode(file=sys.stdout):
    log(line)
