"""palijudge.infer on the tiny model: rows streamed to OUT.partial, resumed after an
interruption (mid-line) only when the partial file's proof line matches the run, refused
otherwise, damaged partial and side files in one line, OUT never overwritten silently."""

from __future__ import annotations

import dataclasses
import errno
import os

import pytest

from palijudge import infer, predictions
from palijudge.data.examples import Example
from palijudge.errors import UserError
from palijudge.configs import EvalConfig

PROMPT = "is it ok"


def _settings(lm, exs, ecfg, model_id="weights-a"):
  return infer.Source(model=lm.spec.weights, data="d", n_examples=len(exs), model_id=model_id,
                      data_id=infer.data_id(exs))


@pytest.fixture
def case(tiny_lm, tiny_examples):
  exs = tiny_examples[0][:12]
  ecfg = EvalConfig(prompt=PROMPT, eval_batch=4).resolved()
  return exs, ecfg, _settings(tiny_lm, exs, ecfg)


def _interrupted(tiny_lm, case, tmp_path, ext: str, rows: int = 5) -> tuple:
  """(OUT, the complete file's text): a whole run, then OUT.partial as a kill after
  `rows` lines and a half left it."""
  exs, ecfg, s = case
  full = tmp_path / f"full.{ext}"
  infer.run(tiny_lm, exs, str(full), s, ecfg, progress=False)
  lines = full.read_text().splitlines(keepends=True)
  out = tmp_path / f"x.{ext}"
  proof = infer.proof_line(s, ecfg)
  (tmp_path / f"x.{ext}.partial").write_text(proof + "".join(lines[:rows]) + lines[rows][:7])
  return out, full.read_text()


@pytest.mark.parametrize("ext", ["tsv", "jsonl"])
def test_inference_streams_and_resumes(tiny_lm, case, tmp_path, ext):
  exs, ecfg, s = case
  out, whole = _interrupted(tiny_lm, case, tmp_path, ext)
  full = tmp_path / f"full.{ext}"
  assert not (tmp_path / f"full.{ext}.partial").exists()
  rows = predictions.read(full)
  assert [r.id for r in rows] == [e.key for e in exs]
  assert [r.pred for r in rows] == [r.p_yes >= 0.5 for r in rows]
  assert not whole.startswith(infer.PROOF)  # The proof line never reaches OUT.
  res = infer.run(tiny_lm, exs, str(out), s, ecfg, progress=False)
  assert res.resumed == (4 if ext == "tsv" else 5) and res.written + res.resumed == 12
  assert out.read_text() == whole
  assert sorted(os.listdir(tmp_path)) == [f"full.{ext}", f"x.{ext}"]
  with pytest.raises(UserError, match="already exists"):
    infer.run(tiny_lm, exs, str(full), s, ecfg, progress=False)


@pytest.mark.parametrize("change, says", [
    (dict(model_id="weights-b"), "came from another model (model_id"),
    (dict(data_id="0" * 64), "came from other data (data_id"),
    (dict(prompt="another prompt"), "came from other settings (prompt"),
    (dict(threshold=0.3), "came from other settings (threshold"),
])
def test_rows_of_another_model_data_or_settings_are_refused(tiny_lm, case, tmp_path, change,
                                                            says):
  """The proof lives in the partial file itself: no side file is needed to refuse."""
  exs, ecfg, s = case
  out, _ = _interrupted(tiny_lm, case, tmp_path, "tsv")
  partial = tmp_path / "x.tsv.partial"
  before = partial.read_bytes()
  on_source = {k: v for k, v in change.items() if k in ("model_id", "data_id")}
  on_judging = {k: v for k, v in change.items() if k not in on_source}  # The EvalConfig's.
  with pytest.raises(UserError, match="delete it to start over") as e:
    infer.run(tiny_lm, exs, str(out), dataclasses.replace(s, **on_source),
              dataclasses.replace(ecfg, **on_judging), progress=False)
  assert says in str(e.value) and "\n" not in str(e.value)
  assert partial.read_bytes() == before and not out.exists()


@pytest.mark.parametrize("first", [b"", b"not a proof\n", b"#palijudge-partial {not json\n",
                                   b"#palijudge-partial [1, 2]\n",
                                   b"id\timage\tlabel\tp_yes\tpred\tprefix\n"])
def test_a_damaged_or_unproven_partial_file_is_one_line(tiny_lm, case, tmp_path, first):
  """Empty, not JSON, a JSON list, or an older partial file without a proof line."""
  exs, ecfg, s = case
  partial = tmp_path / "x.tsv.partial"
  partial.write_bytes(first + b"1\timages/a.png\tyes\t0.5\tyes\t\n")
  with pytest.raises(UserError, match="holds no proof of the model, data and settings") as e:
    infer.run(tiny_lm, exs, str(tmp_path / "x.tsv"), s, ecfg, progress=False)
  assert "delete it to start over" in str(e.value) and "\n" not in str(e.value)
  assert partial.read_bytes() == first + b"1\timages/a.png\tyes\t0.5\tyes\t\n"


@pytest.mark.parametrize("side", [b"", b"{not json", b"[1, 2]"])
def test_a_damaged_side_file_of_an_older_version_is_ignored(tiny_lm, case, tmp_path, side):
  """Regression: OUT.partial.json (empty, not JSON, a list) once crashed the resume."""
  exs, ecfg, s = case
  out, whole = _interrupted(tiny_lm, case, tmp_path, "tsv")
  (tmp_path / "x.tsv.partial.json").write_bytes(side)
  res = infer.run(tiny_lm, exs, str(out), s, ecfg, progress=False)
  assert res.resumed == 4 and out.read_text() == whole
  assert not (tmp_path / "x.tsv.partial.json").exists()
  (tmp_path / "y.tsv.partial.json").write_bytes(side)  # Alone: a fresh run.
  res = infer.run(tiny_lm, exs, str(tmp_path / "y.tsv"), s, ecfg, progress=False)
  assert res.resumed == 0 and (tmp_path / "y.tsv").read_text() == whole


def test_a_row_tsv_cannot_hold_is_refused_before_anything_is_written(tiny_lm, case, tmp_path):
  exs, ecfg, s = case
  bad = dataclasses.replace(exs[3], prefix="is it\tok")
  rows = exs[:3] + [bad] + exs[4:]
  with pytest.raises(UserError) as e:
    infer.run(tiny_lm, rows, str(tmp_path / "x.tsv"), s, ecfg, progress=False)
  msg = str(e.value)
  assert msg.startswith(f"{bad.source}:{bad.line}: its prefix") and "JSONL" in msg
  assert os.listdir(tmp_path) == []  # No header-only OUT.partial, no side file.


def test_a_full_disk_names_the_file_and_keeps_the_rows(tiny_lm, case, tmp_path, monkeypatch):
  exs, ecfg, s = case
  calls = []

  def format_row(row, fmt, with_answer=False, real=predictions.format_row):
    calls.append(row)
    if len(calls) > 8:  # The third batch of 4.
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(row, fmt, with_answer)
  monkeypatch.setattr(predictions, "format_row", format_row)
  with pytest.raises(UserError) as e:
    infer.run(tiny_lm, exs, str(tmp_path / "x.tsv"), s, ecfg, progress=False)
  assert str(e.value).startswith(f"{tmp_path / 'x.tsv.partial'}: cannot write: No space left")
  monkeypatch.undo()
  res = infer.run(tiny_lm, exs, str(tmp_path / "x.tsv"), s, ecfg, progress=False)
  assert res.resumed == 8 and res.written == 4


def test_a_run_that_fails_before_its_first_row_leaves_nothing(tiny_lm, case, tmp_path):
  exs, ecfg, s = case
  missing = dataclasses.replace(exs[0], image=str(tmp_path / "gone.png"))
  assert isinstance(missing, Example)
  with pytest.raises(UserError):
    infer.run(tiny_lm, [missing] + exs[1:], str(tmp_path / "x.tsv"), s, ecfg, progress=False)
  assert os.listdir(tmp_path) == []
