"""Batch inference over a dataset, streamed to a prediction file, resumable.

Rows are appended to `OUT.partial` batch by batch (flushed each time). Its
first line is the proof of what wrote it: the run's settings with the
model's identity (the sha256 of every weights file, `model_id`) and the
data's fingerprint (`data_id`), written atomically with the header before
any row. When every example is done, OUT is written from the rows (through
the one atomic writer) and the partial file removed, so OUT only ever exists
complete. After an interruption the same command resumes: the proof must
match this run exactly (another model, data or setting is refused, saying
how to start over), the rows already there are checked against the dataset
(same ids, same order), an incomplete last line is dropped, and inference
continues from the next example. Without OUT the rows go to stdout (not
resumable).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
from typing import Callable, Sequence, TextIO


from palijudge import predictions
from palijudge import progress as progress_lib
from palijudge.data.examples import Example
from palijudge import files
from palijudge.errors import UserError
from palijudge.configs import EvalConfig
from palijudge.evaluation.scoring import Scorer, iter_scores, judge
from palijudge.loader import LoadedModel

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class InferResult:
  written: int          # Rows written by this call.
  resumed: int          # Rows kept from an earlier, interrupted call.
  path: str | None      # None: stdout.


@dataclasses.dataclass(frozen=True)
class Source:
  """What a prediction file's rows come from: the judge and the data.

  `model` and `data` are names, for messages; `model_id` and `data_id` are what
  proves the rows: the sha256 of the judge's files and the data's fingerprint
  (`data_id`). The judging settings come from the run's EvalConfig (`proof`).
  """
  model: str
  data: str
  n_examples: int
  model_id: str
  data_id: str


def proof(source: Source, ecfg: EvalConfig) -> dict:
  """Everything that must match for a partial file to be resumed (its proof line): the
  source, and every setting of `ecfg` that changes a row."""
  return {**dataclasses.asdict(source), "prompt": ecfg.prompt, "mode": ecfg.mode,
          "threshold": ecfg.decision, "gif_frame": ecfg.gif_frame, "frames": ecfg.frames,
          "combine": ecfg.combine, "batch_size": ecfg.eval_batch}


PROOF = "#palijudge-partial "  # The partial file's first line: this, then the settings' JSON.
_NAMES = ("model", "data")     # Shown, not compared: the ids prove what they name.


def data_id(examples: Sequence[Example]) -> str:
  """The fingerprint of a dataset's rows: ids, images (as resolved), labels, prompts."""
  return files.sha256_text(json.dumps([(e.key, e.image, e.label, e.prefix) for e in examples]))


def proof_line(source: Source, ecfg: EvalConfig) -> str:
  return PROOF + json.dumps(proof(source, ecfg), sort_keys=True) + "\n"


def _check_proof(first: bytes, partial: str, new: dict) -> None:
  """Refuses a partial file whose first line does not prove it was written by this run."""
  again = "delete it to start over"
  text = first.decode("utf-8", errors="replace")
  try:
    old = json.loads(text[len(PROOF):]) if text.startswith(PROOF) else None
  except json.JSONDecodeError:
    old = None
  if not isinstance(old, dict):
    raise UserError(f"{partial}: holds no proof of the model, data and settings that wrote its "
                    f"rows (not written by this version of 13-inference); {again}")
  diff = [k for k in new if k not in _NAMES and old.get(k) != new[k]]
  if diff:
    key = diff[0]
    what = {"model_id": "another model", "data_id": "other data"}.get(key, "other settings")
    show = lambda v: f"{v[:12]}..." if isinstance(v, str) and len(v) > 16 else repr(v)
    raise UserError(f"{partial}: its rows came from {what} ({key}: {show(old.get(key))} != "
                    f"{show(new[key])}; written with {old.get('model')!r} on "
                    f"{old.get('data')!r}); {again}, or run that same command again")


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


def resume_point(partial: str, fmt: str, examples: Sequence[Example], source: Source,
                 ecfg: EvalConfig) -> int:
  """Rows already done in `partial` (0 if none); drops an incomplete last line.

  A partial file is trusted only when its proof line matches `proof(source, ecfg)` exactly.
  """
  if not os.path.exists(partial):
    return 0
  try:
    with open(partial, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f"{partial}: cannot read: {e.strerror or e}") from None
  first, sep, _ = raw.partition(b"\n")
  _check_proof(first if sep else b"", partial, proof(source, ecfg))
  start = len(first) + 1
  keep = raw[:raw.rfind(b"\n") + 1]
  ids = _partial_ids(keep[start:].decode("utf-8", errors="replace"), fmt, partial)
  want = [e.key for e in examples[:len(ids)]]
  if len(ids) > len(examples) or ids != want:
    raise UserError(f"{partial}: its rows do not match the dataset (after {len(ids)} rows); "
                    f"delete it to start over")
  if len(keep) != len(raw):
    with open(partial, "r+b") as f:
      f.truncate(len(keep))
  return len(ids)


def _stream(score: Scorer, todo: Sequence[Example], out: TextIO, fmt: str, ecfg: EvalConfig,
            progress) -> int:
  written = 0
  with_answer = ecfg.mode == "decode"
  for chunk, p, answers in score(todo, ecfg):
    pred, _ = judge(p, answers, ecfg.mode, ecfg.decision)
    rows = predictions.rows_from(chunk, p, pred, answers)
    out.writelines(predictions.format_row(r, fmt, with_answer) for r in rows)
    out.flush()
    written += len(rows)
    progress.update(len(rows))
  return written


def check_target(out_path: str, overwrite: bool) -> None:
  """OUT is never replaced unless asked (--overwrite)."""
  if os.path.exists(out_path) and not overwrite:
    raise UserError(f"{out_path}: already exists; delete it or pass --overwrite")


def run(lm: LoadedModel, examples: Sequence[Example], out_path: str | None,
        source: Source, ecfg: EvalConfig, fmt: str | None = None, overwrite: bool = False,
        progress: bool = True, log: Log = lambda m: print(m, file=sys.stderr),
        scorer: Scorer | None = None) -> InferResult:
  """Predicts every example into `out_path` (or stdout); see the module docstring.

  `scorer` (an ensemble, a probe) judges instead of `lm` (see `scoring.Scorer`).
  """
  score = scorer or functools.partial(iter_scores, lm)
  fmt = fmt or predictions.format_of(out_path)
  predictions.check_values(examples, fmt)
  head = predictions.header(fmt, ecfg.mode == "decode")
  bar = lambda: progress_lib.bar(len(examples), "inference", "ex", enabled=progress)
  if out_path is None:
    sys.stdout.writelines(head)
    with bar() as progress_bar:
      return InferResult(_stream(score, examples, sys.stdout, fmt, ecfg, progress_bar), 0, None)
  check_target(out_path, overwrite)
  files.sweep_stale(os.path.dirname(os.path.abspath(out_path)), os.path.basename(out_path))
  partial = out_path + ".partial"
  done = resume_point(partial, fmt, examples, source, ecfg)
  if done:
    log(f"resuming {partial}: {done} of {len(examples)} rows already done")
  else:  # Proof and header first, atomically: a partial file never lacks them.
    files.write_text(partial, [proof_line(source, ecfg)] + head)
  files.remove(partial + ".json")  # Where earlier versions kept the settings.
  written = 0
  try:
    with bar() as progress_bar, open(partial, "a", encoding="utf-8", newline="\n") as f:
      progress_bar.update(done)
      written = _stream(score, examples[done:], f, fmt, ecfg, progress_bar)
  except KeyboardInterrupt:
    log(f"interrupted; run the same command again to resume from {partial}")
    raise
  except OSError as e:  # A full disk, a lost mount: name the file.
    raise UserError(f"{partial}: cannot write: {e.strerror or e} (the rows so far are kept; "
                    f"the same command resumes)") from None
  except BaseException:
    if not done and not written:  # Nothing to resume: leave nothing behind.
      files.remove(partial)
    raise
  _finish(partial, out_path)
  return InferResult(written, done, out_path)


def _finish(partial: str, out_path: str) -> None:
  """OUT from the partial file's rows (its proof line left out), then the partial removed."""
  with open(partial, "rb") as src, files.atomic_open(out_path, "wb") as dst:
    src.readline()
    shutil.copyfileobj(src, dst, 1 << 20)
  files.remove(partial)
