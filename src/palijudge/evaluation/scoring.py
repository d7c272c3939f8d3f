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
import functools
from typing import Callable, Iterator, Sequence

import numpy as np

from palijudge import distributed, progress
from palijudge import params as params_lib
from palijudge.data import images
from palijudge.data import tokenizer as tok_lib
from palijudge.data.batch import (Batch, Batches, PixelCache, collate, load_frames, prompt_for,
                                  shape_for)
from palijudge.data.examples import Example, parse_yes_no
from palijudge.model.features import FeatureCache
from palijudge.loader import LoadedModel
from palijudge.evaluation import stats
from palijudge.metrics import Confusion, ScoreMetrics
from palijudge.model import paligemma as predict
from palijudge.configs import EvalConfig  # noqa: F401

Log = Callable[[str], None]
# (examples, p_yes (n,) f32, answers) per batch, in order (see `iter_scores`).
Scores = Iterator[tuple[list[Example], np.ndarray, list[str]]]
# What judges examples: `iter_scores` without its model, i.e.
# scorer(examples, ecfg, cache, features) -> Scores. A model's own is
# functools.partial(iter_scores, lm); an ensemble or a probe brings another.
Scorer = Callable[..., Scores]


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

  @functools.cached_property
  def intervals(self) -> stats.Intervals:
    """95 % intervals of accuracy, precision, recall and ROC-AUC (seeded, so cached)."""
    return stats.Intervals.of(self.labels, self.pred, self.p_yes)

  def with_threshold(self, threshold: float) -> EvalResult:
    """The same scores judged at another threshold (score mode; decode keeps its answers)."""
    if self.mode != "score":
      return dataclasses.replace(self, threshold=threshold)
    return dataclasses.replace(self, pred=self.p_yes >= threshold, threshold=threshold)

  def metrics(self) -> dict:
    """Counts, accuracy/precision/recall/F-measure, AUC, AP, Brier, ECE and the threshold."""
    c, s = self.confusion, self.scores
    return {**c.to_dict(), "n": c.total, "auc": s.roc_auc, "average_precision": s.pr_auc,
            "brier": s.brier, "ece": s.ece, "threshold": self.threshold,
            **self.intervals.to_dict(auc_key="auc")}

  @classmethod
  def concat(cls, results: Sequence[EvalResult]) -> EvalResult:
    """One result over several evaluated sets (same threshold)."""
    return cls([e for r in results for e in r.examples],
               np.concatenate([r.p_yes for r in results]),
               np.concatenate([r.pred for r in results]),
               [a for r in results for a in r.answers],
               sum(r.invalid for r in results), results[0].threshold, results[0].mode)


def _decode_batch(lm: LoadedModel, batch: Batch, max_new: int):
  inputs = params_lib.shard_rows(batch.inputs(), lm.mesh)
  out = predict.decode(lm.model, lm.params, inputs, max_new, lm.tok.eos_id)
  answers = []
  for row in out.tokens_BxN:
    ids = [int(t) for t in row]
    if lm.tok.eos_id in ids:
      ids = ids[:ids.index(lm.tok.eos_id)]
    answers.append(lm.tok.decode(ids))
  yn = out.first_logits_BxV[:, list(lm.yes_no_ids)]
  return predict.p_yes(yn), answers


def _score_rows(lm: LoadedModel, batch: Batch) -> np.ndarray:
  """p(yes) per row (rows padded to the devices' count come back too: read the first ones).

  The batch is split over every device the parameters lie on: data parallel
  when they are replicated, FSDP when they are sharded.
  """
  ids = np.asarray(lm.yes_no_ids, np.int32)
  inputs, prefix_len = params_lib.shard_rows((batch.inputs(), batch.prefix_len), lm.mesh)
  return predict.p_yes(predict.yes_no_logits(lm.model, lm.params, inputs, prefix_len, ids))


def _frames_of(ex: Example, size: int, k: int, cache: PixelCache | None) -> np.ndarray:
  """(F, size, size, 3) frames of one example; errors name the data file and line."""
  return cache.frames(ex, size, k) if cache is not None else load_frames(ex, size, k)


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


def iter_scores(lm: LoadedModel, examples: Sequence[Example], ecfg: EvalConfig,
                cache: PixelCache | None = None, features: FeatureCache | None = None
                ) -> Iterator[tuple[list[Example], np.ndarray, list[str]]]:
  """(examples, p_yes (n,) f32, answers) per batch, in order: for streaming.

  `features` (a frozen encoder's cache) replaces images by cached image tokens.
  """
  # A batch far above the set's size would only pad: the power of two that holds the set.
  bs = min(ecfg.eval_batch, 1 << max(0, len(examples) - 1).bit_length())
  if ecfg.gif_frame == "all":
    yield from _iter_all_frames(lm, list(examples), ecfg.prompt, bs, ecfg.frames, ecfg.combine,
                                cache)
    return
  batches = Batches(examples, lm.tok, lm.cfg.image_size, bs, ecfg.prompt, with_suffix=False,
                    gif_frame=ecfg.gif_frame, cache=cache)
  for chunk, batch in batches:
    n = len(chunk)
    if features is not None:
      batch = features.attach(chunk, batch)
    if ecfg.mode == "score":
      yield chunk, _score_rows(lm, batch)[:n].astype(np.float32), [""] * n
    else:
      p, a = _decode_batch(lm, batch, ecfg.max_new)
      yield chunk, p[:n].astype(np.float32), a[:n]


def judge(p_yes: np.ndarray, answers: list[str], mode: str, threshold: float
          ) -> tuple[np.ndarray, int]:
  """(pred (N,) bool, invalid count): p >= threshold, or the decoded answers."""
  if mode == "score":
    return np.asarray(p_yes) >= threshold, 0
  parsed = [parse_yes_no(a) for a in answers]
  return np.array([bool(x) for x in parsed], bool), sum(x is None for x in parsed)


def evaluate(lm: LoadedModel | None, examples: Sequence[Example], ecfg: EvalConfig,
             cache: PixelCache | None = None, features: FeatureCache | None = None,
             desc: str = "evaluate", scorer: Scorer | None = None) -> EvalResult:
  """Every example's p(yes) (and answer, in decode mode), judged at `ecfg.decision`.

  `scorer` (an ensemble, a probe) replaces the model's own `iter_scores`.
  In a multi-process run each process scores its block of the set and every
  process gets all the scores back (`distributed.gather`).
  """
  examples = list(examples)
  mine = examples[distributed.block(len(examples))]  # All of them with one process.
  probs, answers = [], []
  score = scorer or functools.partial(iter_scores, lm)
  with progress.bar(len(mine), desc, "ex") as bar:
    for chunk, p, a in score(mine, ecfg, cache, features) if mine else ():
      probs.append(p)
      answers += a
      bar.update(len(chunk))
  p_yes = np.concatenate(probs) if probs else np.zeros(0, np.float32)
  p_yes = distributed.gather(p_yes, len(examples)).astype(np.float32)
  answers = distributed.gather_texts(answers, len(examples))
  pred, invalid = judge(p_yes, answers, ecfg.mode, ecfg.decision)
  return EvalResult(list(examples), p_yes, pred, answers, invalid, ecfg.decision, ecfg.mode)
