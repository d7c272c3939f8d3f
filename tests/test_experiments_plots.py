"""palijudge.experiments.plots: a run record's PNGs drawn from its logged data, and the
study history plot."""

from __future__ import annotations

import os

import numpy as np

from palijudge.experiments import plots, records
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


def test_history_plot(tmp_path):
  out = plots.render_history([0, 1, 2, 3], [0.5, None, 0.7, 0.2],
                             ["COMPLETE", "FAIL", "COMPLETE", "PRUNED"], tmp_path / "h.png")
  assert out.is_file() and os.path.getsize(out) > 2000
