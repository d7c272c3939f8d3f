"""Honest evaluation in-process on the tiny fixture model: reports, GIF frames, galleries,
streaming inference with resume, outcome filters, prompt ranking, CLI helpers."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest

from palijudge import cli, evaluate, infer, thresholds
from palijudge.data import examples as data
from palijudge import predictions as filters
from palijudge import predictions as predfile
from palijudge import evaluate as prompts
from palijudge import evaluate as reporting
from palijudge import learn as runner
from palijudge import loader as session
from palijudge.data import synthetic as synthetic
from palijudge.errors import UserError
from palijudge.losses import LossConfig
from palijudge.data.tokenizer import Tokenizer
from palijudge.data import splits

from testing import FIXTURES, load_fixture_model

PROMPT = "is it ok"


@pytest.fixture(scope="module")
def lm():
  cfg, model, params = load_fixture_model("paligemma-tiny")
  tok_path = FIXTURES / "paligemma-tiny" / "tokenizer.model"
  spec = session.ModelSpec(cfg, str(FIXTURES / "paligemma-tiny" / "params.npz"), str(tok_path),
                           "fixture")
  return session.LoadedModel(spec, model, params, Tokenizer.load(tok_path))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  root = tmp_path_factory.mktemp("ds")
  path = synthetic.make_dataset(root, n=12, seed=5, yes_fraction=0.5)
  return root, data.read_examples(path)


def _opts(**kw):
  return runner.EvalOptions(prompt=PROMPT, batch_size=4, **kw)


def test_report_picks_on_valid_and_applies_everywhere(lm, ds, tmp_path):
  root, exs = ds
  sets = {"d/all": ["d/train.jsonl", "d/valid.jsonl"], "d/train.jsonl": exs[:6],
          "d/valid.jsonl": exs[6:], "safe": exs[:3]}
  ro = reporting.ReportOptions(pick_split="valid", target=thresholds.Target("f1"),
                               gallery_dir=str(tmp_path / "gal"))
  lines = []
  out = runner.report(lm, sets, _opts(as_json=True), "before training", lines.append,
                      honest=ro)
  t = evaluate.shared_threshold(out)
  assert lines[0].startswith(f"threshold {t:.6g} picked on d/valid.jsonl")
  assert all(r.threshold == t for r in out.values())
  for r in out.values():
    np.testing.assert_array_equal(r.pred, r.p_yes >= t)
  text = "\n".join(lines)
  assert "Result: safe (before training)\n  Tp=" in text and "  ROC-AUC:   " in text
  recs = [json.loads(l) for l in lines if l.startswith("{")]
  assert {r["file"] for r in recs} == set(sets) and all(r["threshold"] == t for r in recs)
  assert len(list((tmp_path / "gal").glob("*.html"))) == 4
  worse = {n: dataclasses.replace(r, pred=~r.labels) for n, r in out.items()}
  assert any(w.startswith("warning: safe got worse after training: accuracy")
             for w in evaluate.regressions(out, worse))


def test_decode_mode_reports_invalid_rate(lm, ds):
  _, exs = ds
  lines = []
  runner.report(lm, {"v": exs[:4]}, _opts(mode="decode"), "", lines.append)
  assert "  invalid answers: " in lines[0] and "/4 (" in lines[0]


def test_gif_all_frames_combine(lm, tmp_path):
  rng = np.random.default_rng(0)
  frames = [synthetic.make_image(rng, violation=v).resize((90, 70)) for v in (False, True, False)]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
  (tmp_path / "d.jsonl").write_text('{"image": "anim.gif", "suffix": "no"}\n'
                                    '{"image": "anim.gif", "suffix": "yes"}\n')
  exs = data.read_examples(tmp_path / "d.jsonl")
  single = [evaluate.evaluate(lm, exs, prompt=PROMPT, gif_frame=f).p_yes[0]
            for f in ("first", "middle", "last")]
  assert max(single) - min(single) > 1e-5  # The frames disagree.
  for how, fn in (("min", min), ("mean", np.mean), ("max", max)):
    res = evaluate.evaluate(lm, exs, prompt=PROMPT, gif_frame="all", combine=how, batch_size=2)
    np.testing.assert_allclose(res.p_yes, [fn(single)] * 2, rtol=1e-4, atol=1e-6)
  two = evaluate.evaluate(lm, exs, prompt=PROMPT, gif_frame="all", frames=2, combine="max")
  np.testing.assert_allclose(two.p_yes[0], max(single[0], single[2]), rtol=1e-4, atol=1e-6)
  with pytest.raises(UserError, match="needs --mode score"):
    evaluate.evaluate(lm, exs, prompt=PROMPT, gif_frame="all", mode="decode")


def _settings(lm, exs):
  return infer.InferSettings(model=lm.spec.weights, data="d", n_examples=len(exs), prompt=PROMPT,
                             mode="score", threshold=0.5, gif_frame="first", frames=0,
                             combine="mean", batch_size=4)


@pytest.mark.parametrize("ext", ["tsv", "jsonl"])
def test_inference_streams_and_resumes(lm, ds, tmp_path, ext):
  _, exs = ds
  s = _settings(lm, exs)
  full = tmp_path / f"full.{ext}"
  res = infer.run(lm, exs, str(full), s, progress=False)
  assert res.written == 12 and not (tmp_path / f"full.{ext}.partial").exists()
  rows = predfile.read(full)
  assert [r.id for r in rows] == [e.key for e in exs]
  assert [r.pred for r in rows] == [r.p_yes >= 0.5 for r in rows]
  lines = full.read_text().splitlines(keepends=True)
  part = tmp_path / f"x.{ext}.partial"
  part.write_text("".join(lines[:5]) + lines[5][:7])  # Interrupted mid-line.
  with pytest.raises(UserError, match="other settings"):
    (tmp_path / f"x.{ext}.partial.json").write_text(json.dumps({"model": "other"}))
    infer.run(lm, exs, str(tmp_path / f"x.{ext}"), s, progress=False)
  (tmp_path / f"x.{ext}.partial.json").unlink()
  res = infer.run(lm, exs, str(tmp_path / f"x.{ext}"), s, progress=False)
  assert res.resumed == (4 if ext == "tsv" else 5) and res.written + res.resumed == 12
  assert (tmp_path / f"x.{ext}").read_text() == full.read_text()
  with pytest.raises(UserError, match="already exists"):
    infer.run(lm, exs, str(full), s, progress=False)


def test_prediction_file_round_trip_and_missing_columns(tmp_path):
  rows = [predfile.PredRow("a", "img/0.png", True, 0.25, False, "p"),
          predfile.PredRow("b", "img/1.png", False, 0.75, True)]
  for ext in ("tsv", "jsonl"):
    path = tmp_path / f"p.{ext}"
    predfile.write(str(path), rows)
    back = predfile.read(path)
    assert [(r.id, r.image, r.label, r.p_yes, r.pred, r.prefix) for r in back] == [
        (r.id, r.image, r.label, r.p_yes, r.pred, r.prefix) for r in rows]
    assert [r.pred for r in predfile.read(path, threshold=0.2)] == [True, True]
  bad = tmp_path / "bad.tsv"
  bad.write_text("image\tlabel\np.png\tyes\n")
  with pytest.raises(UserError, match=r"bad\.tsv: missing column\(s\) pred"):
    predfile.read(bad)
  bad.write_text("label\tpred\tp_yes\nyes\tyes\t1.5\n")
  with pytest.raises(UserError, match=r"bad\.tsv:2: p_yes must be a number in \[0, 1\]"):
    predfile.read(bad)


def _row(i, label, pred):
  return predfile.PredRow(str(i), f"img/{i}.png", label, 0.5, pred)


def test_outcome_filters():
  rows = ([_row(i, True, True) for i in range(4)] + [_row(i, False, False) for i in range(4, 7)]
          + [_row(i, False, True) for i in range(7, 9)] + [_row(i, True, False) for i in (9,)])
  ids = lambda keep, **kw: [r.id for r in filters.select(rows, keep, **kw).rows]
  assert ids("fp") == ["7", "8"] and ids("fn") == ["9"]
  assert ids("errors") == ids("fp+fn") == ["7", "8", "9"]
  assert ids("not-tp") == [str(i) for i in range(4, 10)]
  assert ids("tn+fp") == [str(i) for i in range(4, 9)]
  capped = ids("not-tp", max_rows=3, seed=1)
  assert len(capped) == 3 and capped == sorted(capped, key=int)
  bal = filters.select(rows, "not-tp", balance=True).rows
  assert sum(r.label for r in bal) == 1 and len(bal) == 2
  assert len(filters.select(rows, "tn+fp", max_rows=2).rows) == 2
  with pytest.raises(UserError, match="--balance needs both labels"):
    filters.select(rows, "fp", balance=True)
  lines = filters.dataset_lines(filters.select(rows, "fn").rows, "tsv")
  assert lines == ["id\timage\tlabel\tprefix\n", "9\timg/9.png\tyes\t\n"]


def test_prompt_file_and_ranking(tmp_path, ds, lm):
  f = tmp_path / "p.txt"
  f.write_text("# candidates\n\n  Is this ad ok?  \nIs it lawful?\n")
  assert prompts.read_prompt_file(str(f)) == ["Is this ad ok?", "Is it lawful?"]
  f.write_text("# only a comment\n\n")
  with pytest.raises(UserError, match="no prompts"):
    prompts.read_prompt_file(str(f))
  _, exs = ds
  seen = []

  def fake(examples, prompt):
    seen.append({e.prefix for e in examples})
    return evaluate.evaluate(lm, examples, prompt=prompt, batch_size=4)
  ranked = prompts.rank(exs, ["is it ok", "is this an ad"], "auc", fake)
  assert seen == [{""}, {""}]
  assert ranked[0].value >= ranked[1].value
  table = prompts.format_table(ranked, "auc").splitlines()
  assert table[0].startswith("rank") and table[1].startswith("   1")


def _args(argv, extra=()):
  p = argparse.ArgumentParser()
  cli.add_model_args(p, "tiny")
  cli.add_eval_args(p)
  cli.add_loss_args(p)
  return p.parse_args(list(argv) + list(extra))


@pytest.mark.parametrize("argv,match", [
    (["--threshold", "0.3", "--pick-threshold", "valid"], "contradict"),
    (["--mode", "decode", "--threshold", "0.3"], "--threshold needs --mode score"),
    (["--mode", "decode", "--pick-threshold", "valid"], "--pick-threshold needs --mode score"),
    (["--mode", "decode", "--gif-frame", "all"], "--gif-frame all"),
    (["--target", "f1"], "--target needs --pick-threshold"),
    (["--gif-combine", "min"], "need --gif-frame all"),
    (["--threshold", "1.0"], r"--threshold must be in \(0, 1\)"),
    (["--threshold", "0"], r"--threshold must be in \(0, 1\)"),
])
def test_eval_flag_conflicts(argv, match):
  with pytest.raises(UserError, match=match):
    cli.eval_options(_args(argv))


def test_eval_options_threshold_sources_and_report_options():
  assert cli.eval_options(_args([])).threshold == 0.5
  assert cli.eval_options(_args([]), stored_threshold=0.8).threshold == 0.8
  assert cli.eval_options(_args(["--threshold", "0.3"]), stored_threshold=0.8).threshold == 0.3
  ro = cli.report_options(_args(["--pick-threshold", "valid", "--target", "recall=0.9",
                                 "--gif-frame", "all", "--gif-frames", "4",
                                 "--gif-combine", "min"]))
  assert (ro.pick_split, str(ro.target), ro.frames, ro.combine) == ("valid", "recall=0.9", 4, "min")
  with pytest.raises(UserError, match="--target"):
    cli.report_options(_args(["--pick-threshold", "valid", "--target", "precision=2"]))


def test_eval_sets(ds):
  root, _ = ds
  args = _args(["--root", str(root), "--eval-set", f"safe={root / 'data.jsonl'}"])
  assert list(cli.eval_sets(args)) == ["safe"] and len(cli.eval_sets(args)["safe"]) == 12
  with pytest.raises(UserError, match="already used"):
    cli.eval_sets(args, taken=["safe"])
  with pytest.raises(UserError, match="NAME=FILE"):
    cli.eval_sets(_args(["--eval-set", "safe.jsonl"]))


def test_loss_config_from_flags(ds):
  tr = ds[1][:5]  # Weights come from this split's own counts.
  counts = splits.class_counts(tr)
  cfg = cli.loss_config(_args(["--loss", "focal", "--focal-gamma", "2", "--class-weight", "auto"]), tr)
  n = len(tr)
  assert cfg == LossConfig(kind="focal", focal_gamma=2.0, class_weight=(
      n / (2 * counts["yes"]), n / (2 * counts["no"])))
  assert cli.loss_config(_args(["--class-weight", "2,0.5"]), tr).class_weight == (2.0, 0.5)
  assert cli.loss_config(_args([]), tr) == LossConfig()
  for argv, match in ((["--loss", "bce", "--focal-gamma", "3"], "--focal-gamma applies to"),
                      (["--pos-weight", "2"], "--pos-weight applies to"),
                      (["--loss", "focal", "--bce-weight", "1"], "--bce-weight applies to"),
                      (["--class-weight", "2"], "auto or W_YES,W_NO"),
                      (["--loss", "bce", "--pos-weight", "2", "--class-weight", "auto"], "use one")):
    with pytest.raises(UserError, match=match):
      cli.loss_config(_args(argv), tr)
