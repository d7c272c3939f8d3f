"""Phase timing (`03-do_learn.py --phases`, `tools.fullsize`): named phases in order, each
with its seconds and the device's memory peak at its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Callable

import jax


def device_peak_bytes() -> int | None:
  """Highest `peak_bytes_in_use` over the local devices; None where not reported (CPU)."""
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # Backends without allocator statistics raise or return None.
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


@dataclasses.dataclass(frozen=True)
class Phase:
  """One timed phase.

  peak_bytes: the device's running peak at the phase's end (allocators keep
  one high-water mark per process, never reset); new_peak: whether it rose
  during this phase, i.e. whether the phase itself reached it.
  """
  name: str
  seconds: float
  peak_bytes: int | None
  new_peak: bool | None
  ok: bool = True  # False when the phase raised.


class Phases:
  """Records named phases in order: `with phases("training"): ...`.

  The body must wait for its device work (e.g. `float(loss)`), or the time
  lands in a later phase. Phases do not nest. `clock` and `peak` are injectable
  (tests); `peak` returns bytes or None.
  """

  def __init__(self, clock: Callable[[], float] = time.perf_counter,
               peak: Callable[[], int | None] = device_peak_bytes):
    self.clock, self.peak = clock, peak
    self.records: list[Phase] = []
    self._open: str | None = None

  @contextlib.contextmanager
  def __call__(self, name: str):
    if self._open is not None:
      raise RuntimeError(f"phase {name!r} started inside phase {self._open!r}")
    self._open, before, start, ok = name, self.peak(), self.clock(), False
    try:
      yield self
      ok = True
    finally:
      self.add(name, self.clock() - start, before, ok)
      self._open = None

  def add(self, name: str, seconds: float, peak_before: int | None = None,
          ok: bool = True) -> Phase:
    """Records a phase timed elsewhere (e.g. a compile time measured by AOT)."""
    after = self.peak()
    new = None if after is None or peak_before is None else after > peak_before
    rec = Phase(name, float(seconds), after, new, ok)
    self.records.append(rec)
    return rec

  @property
  def total_s(self) -> float:
    return sum(r.seconds for r in self.records)

  def as_dict(self, **extra) -> dict:
    return {**extra, "phases": [dataclasses.asdict(r) for r in self.records],
            "total_s": round(self.total_s, 3)}

  def json_line(self, **extra) -> str:
    return json.dumps(self.as_dict(**extra))

  def table(self) -> str:
    """A markdown table: phase, seconds, share of the total, device peak."""
    lines = ["| phase | seconds | share | device peak GiB |", "| --- | ---: | ---: | ---: |"]
    total = self.total_s or 1.0
    for r in self.records:
      peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2 ** 30:.2f}"
      mark = "" if r.ok else " (failed)"
      lines.append(f"| {r.name}{mark} | {r.seconds:.2f} | {100 * r.seconds / total:.0f}% | "
                   f"{peak}{' *' if r.new_peak else ''} |")
    lines.append(f"| total | {self.total_s:.2f} | 100% | |")
    if any(r.new_peak for r in self.records):
      lines.append("\n\\* the device's peak memory rose during this phase")
    return "\n".join(lines)


class NoPhases:
  """Phases that records nothing (the default)."""

  def __call__(self, name: str):
    return contextlib.nullcontext(self)

  def add(self, name: str, seconds: float, peak_before: int | None = None, ok: bool = True):
    return None
