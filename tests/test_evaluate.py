"""palijudge.evaluation.scoring on the tiny model: EvalConfig validation and threshold sources,
reports (threshold picked on one set and applied to all, galleries, regressions),
decode mode, GIF frames, prompt ranking."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from palijudge.options import group
from palijudge import cli
from palijudge.evaluation import reports, scoring, thresholds
from palijudge.data import examples as data
from palijudge.data import synthetic
from palijudge.data.examples import Example
from palijudge.errors import UserError
from palijudge.configs import EvalConfig
from palijudge.evaluation.scoring import EvalResult
from palijudge.metrics import Confusion

PROMPT = "is it ok"


def _ecfg(**kw) -> EvalConfig:
  return EvalConfig(prompt=PROMPT, eval_batch=4, **kw)


# --- EvalConfig: flags, validation, threshold sources ----------------------------

@dataclasses.dataclass(frozen=True)
class _Script:
  eval: EvalConfig = group(EvalConfig, "evaluation")


def _args(argv) -> _Script:
  return cli.parse(_Script, argv)[0]


CONFLICTS = [
    (["--threshold", "0.3", "--pick-threshold", "valid"],
     {"threshold": 0.3, "pick_threshold": "valid"}, "contradict"),
    (["--mode", "decode", "--threshold", "0.3"], {"mode": "decode", "threshold": 0.3},
     "--threshold needs --mode score"),
    (["--mode", "decode", "--pick-threshold", "valid"],
     {"mode": "decode", "pick_threshold": "valid"},
     "--pick-threshold needs --mode score"),
    (["--mode", "decode", "--gif-frame", "all"], {"mode": "decode", "gif_frame": "all"},
     "--gif-frame all"),
    (["--target", "f1"], {"target": "f1"}, "--target needs --pick-threshold"),
    (["--gif-combine", "min"], {"gif_combine": "min"}, "need --gif-frame all"),
    (["--threshold", "1.0"], {"threshold": 1.0}, r"--threshold must be in \(0, 1\)"),
    (["--threshold", "0"], {"threshold": 0.0}, r"--threshold must be in \(0, 1\)"),
]


@pytest.mark.parametrize("argv,kw,match", CONFLICTS)
def test_eval_flag_conflicts_are_refused_by_the_config(argv, kw, match):
  with pytest.raises(UserError, match=match):
    EvalConfig(**kw)
  with pytest.raises(UserError, match=match):  # The same refusal from the command line.
    _args(argv)


def test_eval_config_picking_flags():
  """The threshold's sources are configs.EvalConfig.decided's (tests/test_configs.py)."""
  ecfg = _args(["--pick-threshold", "valid", "--target", "recall=0.9", "--gif-frame", "all",
                "--gif-frames", "4", "--gif-combine", "min"]).eval.resolved(0.8)
  assert (ecfg.pick_threshold, str(thresholds.parse_target(ecfg.target)), ecfg.frames,
          ecfg.combine) == ("valid", "recall=0.9", 4, "min")
  assert ecfg.decision == 0.5  # Picked per report; a stored threshold does not count.
  with pytest.raises(UserError, match="--target"):
    _args(["--pick-threshold", "valid", "--target", "precision=2"])


# --- Reports ---------------------------------------------------------------------

def test_report_picks_on_valid_and_applies_everywhere(tiny_lm, tiny_examples, tmp_path):
  exs = tiny_examples[0]
  sets = {"d/all": ["d/train.jsonl", "d/valid.jsonl"], "d/train.jsonl": exs[:6],
          "d/valid.jsonl": exs[6:], "safe": exs[:3]}
  ecfg = _ecfg(json=True, pick_threshold="valid", target="f1", gallery=str(tmp_path / "gal"))
  lines = []
  out = reports.report(tiny_lm, sets, ecfg, "before training", lines.append)
  t = reports.shared_threshold(out)
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
             for w in reports.regressions(out, worse))


def _result(y, p, name):
  exs = [Example(f"/x/{i}.png", bool(v), "", "yes" if v else "no", name, i + 1, f"{i}.png")
         for i, v in enumerate(y)]
  p = np.asarray(p, np.float32)
  return EvalResult(exs, p, p >= 0.5, [""] * len(y), 0, 0.5)


Y = [True, True, True, False, True, False, False, False]
P = [0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.1]


def test_pick_on_valid_applies_unchanged_to_other_splits(monkeypatch):
  results = {"d/train.jsonl": _result([True, False, True, False], [0.72, 0.74, 0.9, 0.2], "t"),
             "d/valid.jsonl": _result(Y, P, "v")}
  # report() judges precomputed results: evaluate() hands back the set's own result.
  by_examples = {id(r.examples): r for r in results.values()}
  monkeypatch.setattr(reports, "evaluate", lambda lm, exs, ecfg, *a, **k: by_examples[id(exs)])
  ecfg = EvalConfig(pick_threshold="valid", target="precision=1")
  logged = []
  out = reports.report(None, {n: r.examples for n, r in results.items()}, ecfg,
                        log=logged.append)
  choice = reports.shared_threshold(out)
  assert choice == pytest.approx(0.75) and "picked on d/valid.jsonl" in logged[0]
  for name, res in out.items():
    assert res.threshold == choice
    np.testing.assert_array_equal(res.pred, results[name].p_yes >= choice)
    np.testing.assert_array_equal(res.p_yes, results[name].p_yes)
  assert out["d/train.jsonl"].confusion == Confusion(tp=1, tn=2, fp=0, fn=1)  # 0.74 < 0.75
  with pytest.raises(UserError, match="--mode score"):
    EvalConfig(pick_threshold="valid", target="precision=1", mode="decode")


def test_eval_result_metrics_dict():
  """The per-set metrics a run record's eval_metrics.json holds (was records.eval_metrics)."""
  m = _result([True, True, False, False], [0.9, 0.4, 0.6, 0.1], "v").metrics()
  assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (1, 1, 1, 1)
  assert m["auc"] == 0.75 and m["n"] == 4 and m["accuracy"] == 0.5 and m["threshold"] == 0.5


def test_decode_mode_reports_invalid_rate(tiny_lm, tiny_examples):
  exs = tiny_examples[0]
  lines = []
  reports.report(tiny_lm, {"v": exs[:4]}, _ecfg(mode="decode"), "", lines.append)
  assert "  invalid answers: " in lines[0] and "/4 (" in lines[0]


def test_gif_all_frames_combine(tiny_lm, tmp_path):
  rng = np.random.default_rng(0)
  frames = [synthetic.make_image(rng, violation=v).resize((90, 70)) for v in (False, True, False)]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
  (tmp_path / "d.jsonl").write_text('{"image": "anim.gif", "suffix": "no"}\n'
                                    '{"image": "anim.gif", "suffix": "yes"}\n')
  exs = data.read_examples(tmp_path / "d.jsonl")
  single = [scoring.evaluate(tiny_lm, exs, EvalConfig(prompt=PROMPT, gif_frame=f)).p_yes[0]
            for f in ("first", "middle", "last")]
  assert max(single) - min(single) > 1e-5  # The frames disagree.
  for how, fn in (("min", min), ("mean", np.mean), ("max", max)):
    res = scoring.evaluate(tiny_lm, exs, EvalConfig(prompt=PROMPT, gif_frame="all",
                                                     gif_combine=how, eval_batch=2))
    np.testing.assert_allclose(res.p_yes, [fn(single)] * 2, rtol=1e-4, atol=1e-6)
  two = scoring.evaluate(tiny_lm, exs, EvalConfig(prompt=PROMPT, gif_frame="all", gif_frames=2,
                                                   gif_combine="max"))
  np.testing.assert_allclose(two.p_yes[0], max(single[0], single[2]), rtol=1e-4, atol=1e-6)
  with pytest.raises(UserError, match="needs --mode score"):
    EvalConfig(prompt=PROMPT, gif_frame="all", mode="decode")


def test_result_block_keeps_its_six_lines_then_ends_with_the_interval_line():
  from statsmodels.stats.proportion import proportion_confint

  from palijudge.metrics import format_block, json_line
  labels = [True] * 6 + [False] * 4
  ex = [Example(f"/d/{i}.png", y, "", "yes" if y else "no", "v.jsonl", i + 1, f"{i}.png")
        for i, y in enumerate(labels)]
  p = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.3, 0.4, 0.2, 0.1, 0.05], np.float32)
  res = EvalResult(ex, p, p >= 0.5, [""] * 10, 0, 0.5)
  lines = reports.format_result(res, "dataset/set1/valid.jsonl").splitlines()
  assert "\n".join(lines[:6]) == format_block(res.confusion, "dataset/set1/valid.jsonl")
  assert lines[6] == "  threshold: 0.5" and lines[10].startswith("  ECE:       ")
  acc = proportion_confint(9, 10, method="wilson")
  assert len(lines) == 12 and lines[-1] == res.intervals.line()
  assert lines[-1].startswith(f"  95% interval: accuracy [{acc[0]:.3f}, {acc[1]:.3f}]  ")
  record = json.loads(json_line(res.confusion, "v", **reports.json_extra(res)))
  assert record["accuracy_ci"] == pytest.approx(list(acc))
  assert record["roc_auc_ci"] == res.intervals.roc_auc.to_list()
  assert res.metrics()["auc_ci"] == res.intervals.roc_auc.to_list()
