"""Evaluate a model on examples: p(yes) per example, then a confusion matrix.

Positive = `yes`. In `score` mode the prediction is p(yes) >= threshold. In
`decode` mode the model generates greedily; an answer other than yes/no is
counted as invalid and as a prediction of `no` (the cautious side when
passing a violating ad is the costly error), and p(yes) is still reported
from the first step's yes/no logits (so AUC and calibration are reported in
both modes; the threshold only applies in score mode).

Animated images with `gif_frame="all"` (score mode only): every frame, or
`frames` evenly spaced ones, is scored as its own row (the prompt repeated),
and the frames' p(yes) are combined per example by `min`, `mean` or `max`
(see `images.combine`). A still image is its one frame.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import json
import os
from typing import Iterator, Sequence

import numpy as np

from palijudge.data import images as images
from palijudge.model import paligemma as predict
from palijudge.data import tokenizer as tok_lib
from palijudge.data.examples import Example
from palijudge import files
from palijudge.errors import UserError, where
from palijudge.metrics import Confusion, ScoreMetrics, format_block, format_scores
from palijudge.data.features import FeatureCache
from palijudge.data.batch import Batches, PixelCache, collate, prompt_for, shape_for
from palijudge.loader import LoadedModel

MODES = ("score", "decode")
_FEED = ("image", "zimg", "text", "mask_ar", "mask_input", "prefix_len")


@dataclasses.dataclass(frozen=True)
class EvalResult:
  examples: list[Example]
  p_yes: np.ndarray        # (N,) f32
  pred: np.ndarray         # (N,) bool
  answers: list[str]       # Decoded text ("" in score mode).
  invalid: int             # Decode answers that were neither yes nor no.
  threshold: float
  mode: str = "score"

  @property
  def labels(self) -> np.ndarray:
    return np.array([e.label for e in self.examples], bool)

  @property
  def confusion(self) -> Confusion:
    return Confusion.from_labels(self.labels.tolist(), self.pred.tolist())

  @property
  def scores(self) -> ScoreMetrics:
    return ScoreMetrics.compute(self.labels, self.p_yes)

  def with_threshold(self, threshold: float) -> EvalResult:
    """The same scores judged at another threshold (score mode; decode keeps its answers)."""
    if self.mode != "score":
      return dataclasses.replace(self, threshold=threshold)
    return dataclasses.replace(self, pred=self.p_yes >= threshold, threshold=threshold)

  @classmethod
  def concat(cls, results: Sequence[EvalResult]) -> EvalResult:
    """One result over several evaluated sets (same threshold)."""
    return cls([e for r in results for e in r.examples],
               np.concatenate([r.p_yes for r in results]),
               np.concatenate([r.pred for r in results]),
               [a for r in results for a in r.answers],
               sum(r.invalid for r in results), results[0].threshold, results[0].mode)


def _answer(text: str) -> bool | None:
  a = text.strip().lower()
  return True if a == "yes" else False if a == "no" else None


def _decode_batch(lm: LoadedModel, batch: dict, max_new: int):
  out = predict.decode(lm.model, lm.params, batch, max_new, lm.tok.eos_id)
  answers = []
  for row in out.tokens_BxN:
    ids = [int(t) for t in row]
    if lm.tok.eos_id in ids:
      ids = ids[:ids.index(lm.tok.eos_id)]
    answers.append(lm.tok.decode(ids))
  yn = out.first_logits_BxV[:, list(lm.yes_no_ids)]
  return predict.p_yes(yn), answers


def _score_rows(lm: LoadedModel, batch: dict) -> np.ndarray:
  feed = {k: batch[k] for k in _FEED if k in batch}
  ids = np.asarray(lm.yes_no_ids, np.int32)
  return predict.p_yes(predict.yes_no_logits(lm.model, lm.params, feed, ids))


def _frames_of(ex: Example, size: int, k: int, cache: PixelCache | None) -> np.ndarray:
  """(F, size, size, 3) frames of one example; errors name the data file and line."""
  key = (ex.image, size, "all", k)
  if cache is not None and key in cache.store:
    return cache.store[key]
  try:
    x = images.load_frames(ex.image, size, k)
  except UserError as e:
    raise UserError(f"{where(ex.source, ex.line)}: {e}") from None
  if cache is not None and cache.used + x.nbytes <= cache.budget:
    cache.store[key] = x
    cache.used += x.nbytes
  return x


def _iter_all_frames(lm: LoadedModel, examples: list[Example], prompt: str, bs: int, k: int,
                     combine: str, cache: PixelCache | None):
  """Score mode over every frame: rows = frames, batched `bs` rows at a time."""
  texts = [tok_lib.tokenize(lm.tok, prompt_for(e, prompt)) for e in examples]
  shape, size = shape_for(texts), lm.cfg.image_size
  with futures.ThreadPoolExecutor(4) as pool:
    for start in range(0, len(examples), bs):
      chunk = examples[start:start + bs]
      frames = list(pool.map(lambda e: _frames_of(e, size, k, cache), chunk))
      owner = np.repeat(np.arange(len(chunk)), [len(f) for f in frames])
      pixels = np.concatenate(frames)
      p_rows = []
      for r in range(0, len(owner), bs):
        rows = owner[r:r + bs]
        batch = collate([texts[start + j] for j in rows], [chunk[j].label for j in rows],
                        pixels[r:r + bs], batch_size=bs, shape=shape)
        p_rows.append(_score_rows(lm, batch)[:len(rows)])
      p_rows = np.concatenate(p_rows)
      p = np.array([images.combine(p_rows[owner == j], combine) for j in range(len(chunk))])
      yield chunk, p.astype(np.float32), [""] * len(chunk)


def iter_scores(lm: LoadedModel, examples: Sequence[Example], *, prompt: str,
                mode: str = "score", batch_size: int = 8, gif_frame: str = "first",
                frames: int = 0, combine: str = "mean", max_new: int = 4,
                cache: PixelCache | None = None, features: FeatureCache | None = None
                ) -> Iterator[tuple[list[Example], np.ndarray, list[str]]]:
  """(examples, p_yes (n,) f32, answers) per batch, in order: for streaming.

  `features` (a frozen encoder's cache) replaces images by cached image tokens.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}")
  if gif_frame == "all":
    if mode != "score":
      raise UserError("--gif-frame all combines p(yes) over frames and needs --mode score")
    yield from _iter_all_frames(lm, list(examples), prompt, batch_size, frames, combine, cache)
    return
  batches = Batches(examples, lm.tok, lm.cfg.image_size, batch_size, prompt, with_suffix=False,
                    gif_frame=gif_frame, cache=cache)
  for chunk, batch in batches:
    n = len(chunk)
    if features is not None:
      batch = features.attach(chunk, batch)
    if mode == "score":
      yield chunk, _score_rows(lm, batch)[:n].astype(np.float32), [""] * n
    else:
      p, a = _decode_batch(lm, batch, max_new)
      yield chunk, p[:n].astype(np.float32), a[:n]


def judge(p_yes: np.ndarray, answers: list[str], mode: str, threshold: float
          ) -> tuple[np.ndarray, int]:
  """(pred (N,) bool, invalid count): p >= threshold, or the decoded answers."""
  if mode == "score":
    return np.asarray(p_yes) >= threshold, 0
  parsed = [_answer(a) for a in answers]
  return np.array([bool(x) for x in parsed], bool), sum(x is None for x in parsed)


def evaluate(lm: LoadedModel, examples: Sequence[Example], *, prompt: str, mode: str = "score",
             batch_size: int = 8, threshold: float = 0.5, gif_frame: str = "first",
             max_new: int = 4, cache: PixelCache | None = None, frames: int = 0,
             combine: str = "mean", features: FeatureCache | None = None) -> EvalResult:
  probs, answers = [], []
  for _, p, a in iter_scores(lm, examples, prompt=prompt, mode=mode, batch_size=batch_size,
                             gif_frame=gif_frame, frames=frames, combine=combine,
                             max_new=max_new, cache=cache, features=features):
    probs.append(p)
    answers += a
  p_yes = np.concatenate(probs).astype(np.float32)
  pred, invalid = judge(p_yes, answers, mode, threshold)
  return EvalResult(list(examples), p_yes, pred, answers, invalid, threshold, mode)


def format_result(res: EvalResult, name: str, heading: str = "Result") -> str:
  """The fixed Result block, then threshold (score mode) or invalid rate, AUCs, calibration."""
  extra = format_scores(res.scores, res.threshold if res.mode == "score" else None,
                        (res.invalid, len(res.examples)) if res.mode == "decode" else None)
  return format_block(res.confusion, name, heading) + "\n" + extra


def json_extra(res: EvalResult) -> dict:
  """Keys added to the JSON line: threshold, mode, invalid (rate), scores."""
  n = len(res.examples)
  return {"threshold": res.threshold, "mode": res.mode, "invalid": res.invalid,
          "invalid_rate": res.invalid / n if n else 0.0, **res.scores.to_dict()}


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


def write_scores(path: str, result: EvalResult) -> None:
  """One JSON line per example: id, image, label, p(yes), prediction (atomic)."""
  lines = []
  for ex, p, pred, ans in zip(result.examples, result.p_yes, result.pred, result.answers):
    row = {"id": ex.key, "image": ex.raw_image, "source": ex.source, "line": ex.line,
           "label": "yes" if ex.label else "no", "p_yes": round(float(p), 6),
           "pred": "yes" if pred else "no"}
    if ans:
      row["answer"] = ans
    lines.append(json.dumps(row, ensure_ascii=False) + "\n")
  files.write_text(os.fspath(path), lines)


# ---- merged from reporting.py ----
# 

import dataclasses
from typing import Callable

from palijudge import gallery, thresholds

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


# ---- merged from prompts.py ----
# 

import dataclasses
from typing import Callable

from palijudge.data import examples as tsv

METRICS = ("auc", "ap", "f1", "precision", "recall", "accuracy")


def read_prompt_file(path: str) -> list[str]:
  """One prompt a line; blank lines and lines starting with # are skipped."""
  prompts = [t.strip() for _, t in tsv.read_lines(path) if not t.lstrip().startswith("#")]
  prompts = [p for p in prompts if p]
  if not prompts:
    raise UserError(f"{path}: no prompts (one a line; # starts a comment)")
  return prompts


@dataclasses.dataclass(frozen=True)
class PromptScore:
  prompt: str
  value: float | None      # The chosen metric (None: undefined, e.g. AUC with one class).
  scores: ScoreMetrics
  confusion: Confusion


def metric_value(metric: str, scores: ScoreMetrics, c: Confusion) -> float | None:
  return {"auc": scores.roc_auc, "ap": scores.pr_auc, "f1": c.f_measure,
          "precision": c.precision, "recall": c.recall, "accuracy": c.accuracy}[metric]


def rank(examples: Sequence[Example], prompts: Sequence[str], metric: str,
         evaluate_fn: Callable[[list[Example], str], object]) -> list[PromptScore]:
  """Scores each prompt with `evaluate_fn(examples, prompt) -> EvalResult`; best first.

  Ties keep the order the prompts were given in; undefined values go last.
  """
  if metric not in METRICS:
    raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
  if len(set(prompts)) != len(prompts):
    raise UserError("the same prompt is given twice")
  plain = [dataclasses.replace(e, prefix="") for e in examples]
  out = []
  for prompt in prompts:
    res = evaluate_fn(plain, prompt)
    scores, conf = res.scores, res.confusion
    out.append(PromptScore(prompt, metric_value(metric, scores, conf), scores, conf))
  order = sorted(range(len(out)), key=lambda i: (out[i].value is None, -(out[i].value or 0), i))
  return [out[i] for i in order]


def _f(x: float | None) -> str:
  return "   n/a" if x is None else f"{x:.4f}"


def format_table(ranked: Sequence[PromptScore], metric: str) -> str:
  """rank, metric, AUC, confusion counts, prompt: one line each, best first."""
  head = f"rank  {metric[:9]:>9}  {'AUC':>6}  {'Tp':>5} {'Tn':>5} {'Fp':>5} {'Fn':>5}  prompt"
  lines = [head]
  for i, r in enumerate(ranked, start=1):
    c = r.confusion
    lines.append(f"{i:>4}  {_f(r.value):>9}  {_f(r.scores.roc_auc):>6}  "
                 f"{c.tp:>5} {c.tn:>5} {c.fp:>5} {c.fn:>5}  {r.prompt}")
  return "\n".join(lines)
