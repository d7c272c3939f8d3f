"""Reporting evaluated sets: the Result blocks, JSON lines, galleries, the picked threshold.

`report` evaluates each named set (`scoring.evaluate`), picks the threshold on one set
when --pick-threshold asks (`thresholds.pick`) and applies it to every set, prints each
set's Result block (and JSON line, and HTML error gallery), and warns for every set that
got worse than its `baseline` (the results before training).
"""

from __future__ import annotations

from typing import Sequence

from palijudge import distributed
from palijudge.configs import EvalConfig
from palijudge.data.batch import PixelCache
from palijudge.data.examples import Example
from palijudge.evaluation import gallery, thresholds
from palijudge.evaluation.scoring import EvalResult, Log, Scorer, evaluate
from palijudge.loader import LoadedModel
from palijudge.metrics import format_block, format_scores, json_line
from palijudge.model.features import FeatureCache


def format_result(res: EvalResult, name: str, heading: str = "Result") -> str:
  """The fixed Result block, then threshold (score mode) or invalid rate, AUCs, calibration,
  and the 95 % intervals."""
  extra = format_scores(res.scores, res.threshold if res.mode == "score" else None,
                        (res.invalid, len(res.examples)) if res.mode == "decode" else None)
  return "\n".join([format_block(res.confusion, name, heading), extra, res.intervals.line()])


def json_extra(res: EvalResult) -> dict:
  """Keys added to the JSON line: threshold, mode, invalid (rate), scores, intervals."""
  n = len(res.examples)
  return {"threshold": res.threshold, "mode": res.mode, "invalid": res.invalid,
          "invalid_rate": res.invalid / n if n else 0.0, **res.scores.to_dict(),
          **res.intervals.to_dict()}


def regressions(before: dict[str, EvalResult], after: dict[str, EvalResult],
                tolerance: float = 0.01) -> list[str]:
  """Warning lines for sets that got worse: accuracy down, AUC or Brier worse by > tolerance."""
  out = []
  for name, a in after.items():
    b = before.get(name)
    if b is None:
      continue
    why = []
    ca, cb = a.confusion.accuracy, b.confusion.accuracy
    if ca < cb:
      why.append(f"accuracy {cb:.4f} -> {ca:.4f}")
    sa, sb = a.scores, b.scores
    if sa.roc_auc is not None and sb.roc_auc is not None and sa.roc_auc < sb.roc_auc - tolerance:
      why.append(f"ROC-AUC {sb.roc_auc:.4f} -> {sa.roc_auc:.4f}")
    if sa.brier is not None and sb.brier is not None and sa.brier > sb.brier + tolerance:
      why.append(f"Brier {sb.brier:.4f} -> {sa.brier:.4f}")
    if why:
      out.append(f"warning: {name} got worse after training: {', '.join(why)}")
  return out


def shared_threshold(results: dict[str, EvalResult]) -> float:
  """The threshold the results were judged at (the picked one, after --pick-threshold)."""
  return float(next(iter(results.values())).threshold)


def _pick(results: dict[str, EvalResult], ecfg: EvalConfig, strict: bool, log: Log
          ) -> dict[str, EvalResult]:
  """Picks the threshold on `ecfg.pick_threshold` and judges every result at it."""
  if ecfg.pick_threshold is None:
    return results
  name = thresholds.resolve_split(ecfg.pick_threshold, list(results))
  res = results[name]
  target = thresholds.parse_target(ecfg.target or "f1")
  choice = thresholds.pick(res.labels, res.p_yes, target, name, strict=strict)
  log(("" if choice.reached else "warning: ") + choice.describe())
  return {n: r.with_threshold(choice.threshold) for n, r in results.items()}


def report(lm: LoadedModel, sets: dict[str, Sequence[Example] | list[str]], ecfg: EvalConfig,
           tag: str = "", log: Log = print, cache: PixelCache | None = None,
           features: FeatureCache | None = None,
           baseline: dict[str, EvalResult] | None = None, strict: bool = True,
           scorer: Scorer | None = None) -> dict[str, EvalResult]:
  """Evaluates each named set and prints its Result block (and JSON line).

  A set given as a list of earlier set names is their union, reported from
  their results without evaluating anything twice. With --pick-threshold the
  threshold is chosen on one set and applied unchanged to all (every result
  then carries it; strict=False warns instead of stopping when the target is
  out of reach, for reports in the middle of a run). `baseline` (the results
  before training) adds a warning line for every set that got worse. `scorer`
  judges instead of `lm` (see `scoring.evaluate`).
  """
  out: dict[str, EvalResult] = {}
  for name, examples in sets.items():
    if not _is_union(examples):
      out[name] = evaluate(lm, examples, ecfg, cache, features,
                           desc=f"{name} ({tag})" if tag else name, scorer=scorer)
  for name, examples in sets.items():
    if _is_union(examples):
      out[name] = EvalResult.concat([out[part] for part in examples])
  out = _pick(out, ecfg, strict, log)
  for name in sets:
    res = out[name]
    log(format_result(res, f"{name} ({tag})" if tag else name))
    if ecfg.json:
      log(json_line(res.confusion, name, stage=tag, **json_extra(res)))
    if ecfg.gallery and distributed.is_main():
      log(f"  gallery: {gallery.write(ecfg.gallery, name, tag, res, ecfg.gallery_max)}")
  for line in regressions(baseline or {}, {n: out[n] for n in sets}):
    log(line)
  return {n: out[n] for n in sets}


def _is_union(value) -> bool:
  return bool(value) and all(isinstance(v, str) for v in value)
