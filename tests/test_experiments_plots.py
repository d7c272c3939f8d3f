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


def test_stages_follow_one_another_and_every_grad_norm_line_is_labelled(tmp_path):
  """Stage 2 is drawn after stage 1 (not over it on steps 1..N again), each run of a lottery
  on its own steps; the grad norm is one labelled line per stage; extra logged columns (a
  valid metric per evaluation) are drawn as labelled points."""
  names = ["stage 1"] * 3 + ["stage 2"] * 2 + ["run 2, stage 1"] * 2 + ["run 2, stage 2"]
  steps = [1, 2, 3, 1, 2, 1, 2, 1]
  assert plots.stage_axis(steps, names).tolist() == [1, 2, 3, 4, 5, 1, 2, 3]
  nan = float("nan")
  fig = plots.loss_figure([1, 2, 3, 1, 2], [1.0, 0.8, 0.6, 0.5, 0.4], [0.1] * 5,
                          [2.0, 1.5, 1.0, 0.5, 0.4], stages=names[:5],
                          extra={"valid_f1": [nan, nan, 0.5, nan, 0.75]})
  loss_ax, lr_ax, *right = fig.axes
  by_label = {l.get_label(): np.asarray(l.get_xdata()).tolist()
              for ax in fig.axes for l in ax.get_lines()}
  assert by_label["stage 1"] == [1, 2, 3] and by_label["stage 2"] == [4, 5]
  assert by_label["grad norm, stage 1"] == [1, 2, 3] and by_label["grad norm, stage 2"] == [4, 5]
  assert by_label["valid_f1"] == [3, 5]
  assert not any(l.get_label().startswith("_") for ax in right for l in ax.get_lines())


def test_a_record_plots_its_stages_in_sequence(tmp_path, monkeypatch):
  rec = RunRecord(tmp_path, "two")
  for stage in ("stage 1", "stage 2"):
    for s in range(1, 5):
      rec.log_step(s, 0.1, 1.0 / s, 1.0, stage=stage)
  seen = {}
  real = plots.loss_figure

  def spy(steps, loss, lr, grad_norm, title, stages, extra):
    seen["x"] = plots.stage_axis(steps, stages).tolist()
    return real(steps, loss, lr, grad_norm, title, stages, extra)
  monkeypatch.setattr(plots, "loss_figure", spy)
  assert rec.plots()[0].name == "loss.png"
  assert seen["x"] == [1, 2, 3, 4, 5, 6, 7, 8]
