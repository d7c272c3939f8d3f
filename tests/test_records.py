"""Run records (experiments/<run>/ files, plots) and the ROC/PR curve math."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from palijudge.experiments import plots as plots
from palijudge.experiments import records as records
from palijudge.errors import UserError
from palijudge.experiments.records import RunRecord


def _fill(rec: RunRecord, n: int = 40, seed: int = 0) -> tuple[list[bool], list[float]]:
  rng = np.random.default_rng(seed)
  for s in range(1, 11):
    rec.log_step(s, 0.03 * s / 10, 2.0 / s, 1.5, s * 0.25)
  labels = (rng.random(n) < 0.6).tolist()
  p_yes = np.clip(0.3 * np.array(labels) + 0.7 * rng.random(n), 0, 1).round(4).tolist()
  rec.write_predictions([{"image": f"img/{i}.png", "label": "yes" if y else "no", "p_yes": p,
                          "pred": "yes" if p >= 0.5 else "no"}
                         for i, (y, p) in enumerate(zip(labels, p_yes))])
  return labels, p_yes


def test_unique_folders(tmp_path):
  a = RunRecord(tmp_path, "set1 run/1")
  b = RunRecord(tmp_path, "set1 run/1")
  c = RunRecord(tmp_path)
  assert a.name == "set1-run-1" and b.name == "set1-run-1-2" and a.path.is_dir()
  assert len(c.name) == 15 and c.path.parent == tmp_path  # 20250101-120000


def test_files_round_trip(tmp_path):
  rec = RunRecord(tmp_path / "experiments", "r1")
  cfg = {"model": "tiny", "train": {"lr": 0.03, "steps": 10, "loss": ("ce",)},
         "path": tmp_path, "n": np.int64(3), "prompt": "Is this ad OK?"}
  rec.write_config(cfg)
  rec.write_config({"seed": 1}, merge=True)
  loaded = yaml.safe_load(rec.file("config.yaml").read_text())
  assert loaded == {"model": "tiny", "train": {"lr": 0.03, "steps": 10, "loss": ["ce"]},
                    "path": str(tmp_path), "n": 3, "prompt": "Is this ad OK?", "seed": 1}
  rec.log_step(1, 0.001, 2.5, 10.0, 0.5)
  rec.log_step(2, 0.002, float("nan"), None, 1.0)
  with open(rec.file("train_log.csv")) as f:
    rows = list(csv.reader(f))
  assert rows[0] == list(records.LOG_FIELDS) and rows[1] == ["1", "0.001", "2.5", "10.0", "0.5"]
  assert rec.steps()[1] == {"step": 2.0, "lr": 0.002, "loss": None, "grad_norm": None,
                            "seconds": 1.0}
  rec.write_eval("before training", {"valid": {"accuracy": 0.5}})
  rec.write_eval("1st trained", {"valid": {"accuracy": np.float32(0.75)}})
  rec.write_eval("before training", {"valid": {"accuracy": 0.6}})
  ev = json.loads(rec.file("eval_metrics.json").read_text())
  assert list(ev) == ["before training", "1st trained"]
  assert ev["before training"]["valid"]["accuracy"] == 0.6
  rec.write_summary({"run": "r1", "valid": {"accuracy": 0.75}})
  assert rec.summary().startswith("# r1\n") and "| accuracy | 0.75 |" in rec.summary()
  again = RunRecord.load(rec.path)
  assert again.config()["seed"] == 1 and again.eval_metrics() == ev
  assert not [p for p in rec.path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_files_are_user_errors(tmp_path):
  rec = RunRecord(tmp_path, "bad")
  rec.file("eval_metrics.json").write_text("{oops")
  with pytest.raises(UserError, match="eval_metrics.json: invalid JSON"):
    rec.write_eval("x", {})
  rec.file("predictions.jsonl").write_text('{"p_yes": 0.5}\nnot json\n')
  with pytest.raises(UserError, match=r"predictions.jsonl:2: invalid JSON"):
    rec.predictions()
  with pytest.raises(UserError, match="no such run folder"):
    RunRecord.load(tmp_path / "missing")


def test_plots_from_logged_data(tmp_path):
  rec = RunRecord(tmp_path, "plots")
  assert rec.plots() == []  # nothing logged yet
  _fill(rec)
  made = rec.plots()
  assert sorted(p.name for p in made) == sorted(records.PLOTS.values())
  for p in made:
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
  assert set(rec.plot_files()) == set(records.PLOTS)


def test_one_class_predictions_skip_curves(tmp_path):
  rec = RunRecord(tmp_path, "one")
  rec.write_predictions([{"label": "yes", "p_yes": 0.9}, {"label": "yes", "p_yes": 0.2}])
  names = {p.name for p in rec.plots()}
  assert names == {"pr.png", "confusion.png", "p_yes_hist.png"}  # ROC needs both classes


def test_eval_metrics_dict():
  m = records.eval_metrics([True, True, False, False], [0.9, 0.4, 0.6, 0.1])
  assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (1, 1, 1, 1)
  assert m["auc"] == 0.75 and m["n"] == 4 and m["accuracy"] == 0.5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])),
                min_size=2, max_size=30))
def test_auc_and_ap_match_sklearn(pairs):
  metrics = pytest.importorskip("sklearn.metrics")
  y = [p[0] for p in pairs]
  s = [p[1] for p in pairs]
  if len(set(y)) < 2:
    assert plots.auc(y, s) is None
    return
  assert plots.auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))
  assert plots.average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s))


def test_history_plot(tmp_path):
  out = plots.render_history([0, 1, 2, 3], [0.5, None, 0.7, 0.2],
                             ["COMPLETE", "FAIL", "COMPLETE", "PRUNED"], tmp_path / "h.png")
  assert out.is_file() and os.path.getsize(out) > 2000
