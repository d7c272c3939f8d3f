"""Evaluate a model on examples: p(yes) per example, then a confusion matrix.

Positive = `yes`. In `score` mode the prediction is p(yes) >= threshold. In
`decode` mode the model generates greedily; an answer other than yes/no is
counted as invalid and as a prediction of `no` (the cautious side when
passing a violating ad is the costly error), and p(yes) is still reported
from the first step's yes/no logits.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from palijudge import predict
from palijudge.data import Example
from palijudge.metrics import Confusion
from palijudge.pipeline import Batches, PixelCache
from palijudge.session import LoadedModel

MODES = ("score", "decode")


@dataclasses.dataclass(frozen=True)
class EvalResult:
  examples: list[Example]
  p_yes: np.ndarray        # (N,) f32
  pred: np.ndarray         # (N,) bool
  answers: list[str]       # Decoded text ("" in score mode).
  invalid: int             # Decode answers that were neither yes nor no.
  threshold: float

  @property
  def labels(self) -> np.ndarray:
    return np.array([e.label for e in self.examples], bool)

  @property
  def confusion(self) -> Confusion:
    return Confusion.from_labels(self.labels.tolist(), self.pred.tolist())

  @classmethod
  def concat(cls, results: Sequence[EvalResult]) -> EvalResult:
    """One result over several evaluated sets (same threshold)."""
    return cls([e for r in results for e in r.examples],
               np.concatenate([r.p_yes for r in results]),
               np.concatenate([r.pred for r in results]),
               [a for r in results for a in r.answers],
               sum(r.invalid for r in results), results[0].threshold)


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


def evaluate(lm: LoadedModel, examples: Sequence[Example], *, prompt: str, mode: str = "score",
             batch_size: int = 8, threshold: float = 0.5, gif_frame: str = "first",
             max_new: int = 4, cache: PixelCache | None = None) -> EvalResult:
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}")
  ids = np.asarray(lm.yes_no_ids, np.int32)
  probs, answers = [], []
  batches = Batches(examples, lm.tok, lm.cfg.image_size, batch_size, prompt, with_suffix=False,
                    gif_frame=gif_frame, cache=cache)
  for chunk, batch in batches:
    n = len(chunk)
    if mode == "score":
      feed = {k: batch[k] for k in ("image", "text", "mask_ar", "mask_input", "prefix_len")}
      probs.append(predict.p_yes(predict.yes_no_logits(lm.model, lm.params, feed, ids))[:n])
      answers += [""] * n
    else:
      p, a = _decode_batch(lm, batch, max_new)
      probs.append(p[:n])
      answers += a[:n]
  p_yes = np.concatenate(probs).astype(np.float32)
  if mode == "score":
    pred, invalid = p_yes >= threshold, 0
  else:
    parsed = [_answer(a) for a in answers]
    pred = np.array([bool(x) for x in parsed])
    invalid = sum(x is None for x in parsed)
  return EvalResult(list(examples), p_yes, pred, answers, invalid, threshold)


def write_scores(path: str, result: EvalResult) -> None:
  """One JSON line per example: image, label, p(yes), prediction (atomic)."""
  tmp = f"{path}.tmp"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(tmp, "w", encoding="utf-8") as f:
    for ex, p, pred, ans in zip(result.examples, result.p_yes, result.pred, result.answers):
      row = {"image": ex.raw_image, "source": ex.source, "line": ex.line,
             "label": "yes" if ex.label else "no", "p_yes": round(float(p), 6),
             "pred": "yes" if pred else "no"}
      if ans:
        row["answer"] = ans
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
