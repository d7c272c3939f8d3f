"""palijudge.infer on the tiny model: rows streamed to OUT.partial, resumed after an
interruption (mid-line), refused for other settings, OUT never overwritten silently."""

from __future__ import annotations

import json

import pytest

from palijudge import infer, predictions
from palijudge.errors import UserError
from palijudge.evaluate import EvalConfig

PROMPT = "is it ok"


def _settings(lm, exs, ecfg):
  return infer.InferSettings(model=lm.spec.weights, data="d", n_examples=len(exs),
                             prompt=ecfg.prompt, mode=ecfg.mode, threshold=ecfg.decision,
                             gif_frame=ecfg.gif_frame, frames=ecfg.frames, combine=ecfg.combine,
                             batch_size=ecfg.eval_batch)


@pytest.mark.parametrize("ext", ["tsv", "jsonl"])
def test_inference_streams_and_resumes(tiny_lm, tiny_examples, tmp_path, ext):
  exs = tiny_examples[0][:12]
  ecfg = EvalConfig(prompt=PROMPT, eval_batch=4).resolved()
  s = _settings(tiny_lm, exs, ecfg)
  full = tmp_path / f"full.{ext}"
  res = infer.run(tiny_lm, exs, str(full), s, ecfg, progress=False)
  assert res.written == 12 and not (tmp_path / f"full.{ext}.partial").exists()
  rows = predictions.read(full)
  assert [r.id for r in rows] == [e.key for e in exs]
  assert [r.pred for r in rows] == [r.p_yes >= 0.5 for r in rows]
  lines = full.read_text().splitlines(keepends=True)
  part = tmp_path / f"x.{ext}.partial"
  part.write_text("".join(lines[:5]) + lines[5][:7])  # Interrupted mid-line.
  with pytest.raises(UserError, match="other settings"):
    (tmp_path / f"x.{ext}.partial.json").write_text(json.dumps({"model": "other"}))
    infer.run(tiny_lm, exs, str(tmp_path / f"x.{ext}"), s, ecfg, progress=False)
  (tmp_path / f"x.{ext}.partial.json").unlink()
  res = infer.run(tiny_lm, exs, str(tmp_path / f"x.{ext}"), s, ecfg, progress=False)
  assert res.resumed == (4 if ext == "tsv" else 5) and res.written + res.resumed == 12
  assert (tmp_path / f"x.{ext}").read_text() == full.read_text()
  with pytest.raises(UserError, match="already exists"):
    infer.run(tiny_lm, exs, str(full), s, ecfg, progress=False)
