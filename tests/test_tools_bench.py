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
                      "yes_no_classification", "do_learn_iteration", "iteration_floor",
                      "start_cold_warm"]
  floor = rows[-2]
  rows = rows[:-2] + rows[-1:]
  for r in rows[:-1]:
    assert r["ours"] > 0 and r["plain"] > 0 and r["speedup"] > 0
  # The floor: the iteration's arithmetic at the best GEMM rate, below what ours took.
  iteration = rows[-2]
  assert floor["iteration_flop"] > 0 and 0 < floor["floor_cpu_s"] < iteration["ours_cpu_s"]
  assert floor["plain_cpu_s"] == iteration["plain_cpu_s"] and floor["max_speedup_cpu"] > 0
  assert 0 <= floor["ours_at_floor_share"] < 1  # Rounded: a tiny model's share shows as 0.
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


def test_matmul_flops_counts_dots_convolutions_loops_and_gradients():
  """The floor's counter: 2 FLOPs per multiply-add; a scan's body once per iteration (XLA's
  cost analysis counts it once); a gradient's dots counted as the jaxpr holds them."""
  import jax
  import jax.numpy as jnp
  a, w = jnp.ones((8, 16)), jnp.ones((16, 32))
  assert bench.matmul_flops(jnp.matmul, a, w) == 2 * 8 * 16 * 32
  square = jnp.ones((16, 16))

  def looped(x):
    return jax.lax.scan(lambda c, _: (c @ square, None), x, None, length=5)[0]
  assert bench.matmul_flops(looped, a) == 5 * 2 * 8 * 16 * 16
  # d/dw of sum(a @ w): forward a @ w, backward a.T @ g (dx is not needed, a is no input).
  assert bench.matmul_flops(jax.grad(lambda w: (a @ w).sum()), w) == 2 * (2 * 8 * 16 * 32)
  image, kernel = jnp.ones((1, 3, 14, 14)), jnp.ones((4, 3, 7, 7))  # NCHW, OIHW.
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (7, 7), "VALID")  # noqa: E731
  assert bench.matmul_flops(conv, image, kernel) == 2 * (4 * 2 * 2) * (3 * 7 * 7)
  assert bench.matmul_flops(lambda x: jax.lax.cond(x.sum() > 0, lambda y: y @ square,
                                                   lambda y: y, x), jnp.ones((8, 16))) \
      == 2 * 8 * 16 * 16  # A cond: its dearest branch.


def test_recorded_curves_have_every_step(tmp_path):
  curves = bench.record_curves(str(tmp_path), seeds=1, lrs=(0.03,), steps=5, models=("tiny",),
                               log=lambda _: None)
  assert [(c["model"], c["lr"], c["seed"], len(c["loss"])) for c in curves] == [
      ("tiny", 0.03, 0, 5)]
