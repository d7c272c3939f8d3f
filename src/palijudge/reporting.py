"""What `runner.report` adds to plain evaluation: a picked threshold, galleries, warnings.

`ReportOptions` gathers the honest-evaluation flags (`cli.report_options`
builds it): pick the threshold on one named set (`--pick-threshold valid
--target precision=0.95`) and judge every set at it; score all frames of
animated images; write an error gallery per evaluated set.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from palijudge import gallery, thresholds
from palijudge.errors import UserError
from palijudge.evaluate import EvalResult

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ReportOptions:
  pick_split: str | None = None       # Set name (or file stem) to pick the threshold on.
  target: thresholds.Target = thresholds.Target("f1")
  strict_target: bool = True          # Unreachable target: error (True) or warn + best.
  frames: int = 0                     # --gif-frame all: frames per animation (0 = every).
  combine: str = "mean"               # --gif-frame all: min | mean | max.
  gallery_dir: str | None = None      # Write an error gallery per set here.
  gallery_limit: int = 200            # Thumbnails per section.


def apply_pick(results: dict[str, EvalResult], ro: ReportOptions, mode: str, log: Log
               ) -> tuple[dict[str, EvalResult], thresholds.ThresholdPick | None]:
  """Picks the threshold on `ro.pick_split` and judges every result at it."""
  if ro.pick_split is None:
    return results, None
  if mode != "score":
    raise UserError("--pick-threshold needs --mode score (decode predicts from the answer text)")
  name = thresholds.resolve_split(ro.pick_split, list(results))
  res = results[name]
  choice = thresholds.pick(res.labels, res.p_yes, ro.target, name, strict=ro.strict_target)
  log(("" if choice.reached else "warning: ") + choice.describe())
  return {n: r.with_threshold(choice.threshold) for n, r in results.items()}, choice


def write_gallery(ro: ReportOptions, name: str, tag: str, res: EvalResult, log: Log) -> None:
  if ro.gallery_dir:
    path = gallery.write(ro.gallery_dir, name, tag, res, ro.gallery_limit)
    log(f"  gallery: {path}")
