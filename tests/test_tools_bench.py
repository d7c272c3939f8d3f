"""tools/bench.py: the harness runs end to end on a tiny model and reports every row."""

from __future__ import annotations

import json

import pytest

from palijudge.model import config
from palijudge.tools import bench


@pytest.mark.script
def test_bench_reports_every_row_on_a_tiny_model(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(bench, "PLAIN_MAX_NEW", 8)  # The harness, not a 128-token decode.
  rows = bench.main(str(tmp_path), steps=2, n_images=12, model_config=config.PRESETS["tiny"])
  printed = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
  measures = [r["measure"] for r in printed]
  assert measures == ["machine", "load_and_compile", "train_step", "train_step_cached",
                      "yes_no_classification", "do_learn_iteration", "start_cold_warm"]
  for r in rows[:-1]:
    assert r["ours"] > 0 and r["plain"] > 0 and r["speedup"] > 0
  for r in rows[:-1]:  # CPU seconds beside wall seconds (loaded machines: the steadier one).
    if r["measure"] != "train_step" and r["measure"] != "train_step_cached":
      assert r["ours_cpu_s"] > 0 and r["plain_cpu_s"] > 0
      # Both CPU times are rounded to 0.01 s (and the ratio too): within what that allows.
      low = (r["plain_cpu_s"] - 0.005) / (r["ours_cpu_s"] + 0.005) - 0.005
      high = (r["plain_cpu_s"] + 0.005) / max(r["ours_cpu_s"] - 0.005, 1e-9) + 0.005
      assert low <= r["speedup_cpu"] <= high, r
  assert rows[-1]["cold_cpu_s"] > 0  # The scripts' own CPU time (children).
  start = rows[-1]
  assert len(start["compile_cold_s"]) == 2 and len(start["compile_warm_s"]) == 2
  # The second stage (lr/10) reuses the first stage's compiled step.
  assert start["compile_cold_s"][1] < start["compile_cold_s"][0]


def test_rows_pick_the_measurements(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(bench, "PLAIN_MAX_NEW", 8)
  rows = bench.main(str(tmp_path), steps=2, n_images=12, model_config=config.PRESETS["tiny"],
                    rows=("iteration",))
  assert [r["measure"] for r in rows] == ["do_learn_iteration"]
  assert rows[0]["ours_cpu_s"] > 0 and rows[0]["plain_cpu_s"] > 0


def test_recorded_curves_have_every_step(tmp_path):
  curves = bench.record_curves(str(tmp_path), seeds=1, lrs=(0.03,), steps=5, models=("tiny",),
                               log=lambda _: None)
  assert [(c["model"], c["lr"], c["seed"], len(c["loss"])) for c in curves] == [
      ("tiny", 0.03, 0, 5)]
