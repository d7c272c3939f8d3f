"""Batch inference over a dataset, streamed to a prediction file, resumable.

Rows are appended to `OUT.partial` batch by batch (flushed each time) next to
a `OUT.partial.json` holding the run's settings; when every example is done
the partial file is renamed to OUT, so OUT only ever exists complete. After
an interruption the same command resumes: the rows already in `OUT.partial`
are checked against the dataset (same ids, same order, same settings), an
incomplete last line is dropped, and inference continues from the next
example. Without OUT the rows go to stdout (not resumable).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Callable, Sequence, TextIO


from palijudge import predictions
from palijudge import progress as progress_lib
from palijudge.data.examples import Example
from palijudge import files
from palijudge.errors import UserError
from palijudge.evaluate import EvalConfig, Scorer, iter_scores, judge
from palijudge.loader import LoadedModel

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class InferResult:
  written: int          # Rows written by this call.
  resumed: int          # Rows kept from an earlier, interrupted call.
  path: str | None      # None: stdout.


@dataclasses.dataclass(frozen=True)
class InferSettings:
  """Everything that must match for a partial file to be resumed."""
  model: str
  data: str
  n_examples: int
  prompt: str
  mode: str
  threshold: float
  gif_frame: str
  frames: int
  combine: str
  batch_size: int


def _partial_ids(text: str, fmt: str, path: str) -> list[str]:
  lines = text.split("\n")[:-1]  # Complete lines only.
  if fmt == "tsv":
    if not lines:
      return []
    if lines[0].split("\t")[:len(predictions.COLUMNS)] != list(predictions.COLUMNS):
      raise UserError(f"{path}: not a prediction file written by 13-inference; delete it")
    return [line.split("\t", 1)[0] for line in lines[1:]]
  try:
    return [str(json.loads(line)["id"]) for line in lines]
  except (json.JSONDecodeError, KeyError, TypeError):
    raise UserError(f"{path}: unreadable row; delete it to start over") from None


def resume_point(partial: str, fmt: str, examples: Sequence[Example],
                 settings: InferSettings) -> int:
  """Rows already done in `partial` (0 if none); drops an incomplete last line."""
  meta_path = partial + ".json"
  if not os.path.exists(partial):
    return 0
  if os.path.exists(meta_path):
    with open(meta_path, encoding="utf-8") as f:
      old = json.load(f)
    new = dataclasses.asdict(settings)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
      raise UserError(f"{partial}: left by a run with other settings ({diff[0]}: "
                      f"{old.get(diff[0])!r} != {new[diff[0]]!r}); delete it to start over")
  with open(partial, "rb") as f:
    raw = f.read()
  keep = raw[:raw.rfind(b"\n") + 1]
  ids = _partial_ids(keep.decode("utf-8", errors="replace"), fmt, partial)
  want = [e.key for e in examples[:len(ids)]]
  if len(ids) > len(examples) or ids != want:
    raise UserError(f"{partial}: its rows do not match the dataset (after {len(ids)} rows); "
                    f"delete it to start over")
  if len(keep) != len(raw):
    with open(partial, "r+b") as f:
      f.truncate(len(keep))
  return len(ids)


def _stream(score: Scorer, todo: Sequence[Example], out: TextIO, fmt: str,
            s: InferSettings, ecfg: EvalConfig, progress) -> int:
  written = 0
  with_answer = s.mode == "decode"
  for chunk, p, answers in score(todo, ecfg):
    pred, _ = judge(p, answers, s.mode, s.threshold)
    rows = predictions.rows_from(chunk, p, pred, answers)
    out.writelines(predictions.format_row(r, fmt, with_answer) for r in rows)
    out.flush()
    written += len(rows)
    progress.update(len(rows))
  return written


def run(lm: LoadedModel, examples: Sequence[Example], out_path: str | None,
        settings: InferSettings, ecfg: EvalConfig, fmt: str | None = None, overwrite: bool = False,
        progress: bool = True, log: Log = lambda m: print(m, file=sys.stderr),
        scorer: Scorer | None = None) -> InferResult:
  """Predicts every example into `out_path` (or stdout); see the module docstring.

  `scorer` (an ensemble, a probe) judges instead of `lm` (see `evaluate.Scorer`).
  """
  score = scorer or functools.partial(iter_scores, lm)
  fmt = fmt or predictions.format_of(out_path)
  head = predictions.header(fmt, settings.mode == "decode")
  bar = lambda: progress_lib.bar(len(examples), "inference", "ex", enabled=progress)
  if out_path is None:
    sys.stdout.writelines(head)
    with bar() as progress_bar:
      return InferResult(_stream(score, examples, sys.stdout, fmt, settings, ecfg, progress_bar),
                         0, None)
  if os.path.exists(out_path) and not overwrite:
    raise UserError(f"{out_path}: already exists; delete it or pass --overwrite")
  partial = out_path + ".partial"
  done = resume_point(partial, fmt, examples, settings)
  if done:
    log(f"resuming {partial}: {done} of {len(examples)} rows already done")
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  files.write_text(partial + ".json", json.dumps(dataclasses.asdict(settings)))
  written = 0
  try:
    with bar() as progress_bar, open(partial, "a", encoding="utf-8", newline="\n") as f:
      progress_bar.update(done)
      if f.tell() == 0:
        f.writelines(head)
      written = _stream(score, examples[done:], f, fmt, settings, ecfg, progress_bar)
  except KeyboardInterrupt:
    log(f"interrupted; run the same command again to resume from {partial}")
    raise
  os.replace(partial, out_path)
  os.remove(partial + ".json")
  return InferResult(written, done, out_path)
