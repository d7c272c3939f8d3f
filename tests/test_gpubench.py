"""The GPU benchmark harness, run end to end on its small CPU configurations."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from palijudge.errors import UserError
from palijudge.model import config as config_lib
from palijudge.tools import gpubench

GIB = 1024 ** 3
# Hand-countable: D=4, N=2 heads, K=1 kv head, H=2, F=8, V=16, 2 layers, P=4 image tokens.
_SMALL = dict(image_size=28,
              img=dict(patch_size=14, width=4, depth=1, mlp_dim=4, num_heads=1),
              llm=dict(vocab_size=16, width=4, depth=2, mlp_dim=8, num_heads=2,
                       num_kv_heads=1, head_dim=2))


def _json_lines(lines: list[str]) -> list[dict]:
  return [json.loads(line) for line in lines if line.startswith("{")]


def test_cpu_run_end_to_end(monkeypatch):
  """The "default" list as CI runs it (one test: under xdist a shared fixture would
  run once per worker)."""
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # main() sets it; undone after.
  lines: list[str] = []
  returned = gpubench.main("default", budget_s=600, out=lines.append)
  text = "\n".join(lines).splitlines()
  records = _json_lines(text)
  assert records[1:] == json.loads(json.dumps(returned))
  _check_every_field(records)
  rows = {r.get("config"): r for r in records}
  _check_train_row(rows["tiny-b2"])
  _check_allocator_and_score(rows)
  _check_table(records, [t for t in text if t.startswith("|")])


def _check_every_field(records):
  machine, rows = records[0], records[1:]
  assert machine["measure"] == "machine" and machine["backend"] == "cpu"
  assert [r["config"] for r in rows] == [s.name for s in gpubench.cpu_default()]
  for rec in rows:
    assert set(gpubench.FIELDS) <= set(rec), rec["config"]
    assert rec["mfu"] is None and rec["peak_flops"] is None and rec["peak_bytes"] is None
  status = {r["config"]: r["status"] for r in rows}
  assert status == {"tiny-b2": "ok", "tiny-b2-pool12": "skipped",
                    "tiny-largest-pool12": "skipped", "tiny-b2-users-allocator": "ok",
                    "score-tiny-b2": "ok"}
  assert all("GPU" in r["reason"] for r in rows if r["status"] == "skipped")


def _check_train_row(rec):
  cfg = config_lib.preset("tiny")
  assert rec["model"] == "tiny" and rec["recipe"] == "attn, sgd, frozen bfloat16, remat none"
  assert rec["batch"] == 2 and rec["steps"] == 3 and rec["device_kind"] == "cpu"
  assert rec["compile_s"] > 0 and rec["step_s"] > 0 and rec["loss_finite"]
  assert rec["examples_per_s"] == pytest.approx(2 / rec["step_s"], rel=1e-2)
  assert rec["tokens_per_s"] == pytest.approx(rec["examples_per_s"] * (cfg.num_patches + 16),
                                              rel=1e-3)
  assert rec["flops_per_step"] == gpubench.step_flops(cfg, "attn", 2, 16)
  assert rec["flops_source"] == "analytic"
  # tiny has 2 layers, so XLA's count (scan body once) is complete: an independent check.
  assert rec["xla_flops"] == pytest.approx(rec["flops_per_step"], rel=0.1)


def _check_allocator_and_score(rows):
  alloc = rows["tiny-b2-users-allocator"]
  assert alloc["env"]["XLA_PYTHON_CLIENT_ALLOCATOR"] == "platform"
  assert alloc["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert alloc["baseline_step_s"] == rows["tiny-b2"]["step_s"]  # The batch's own row, reused.
  assert alloc["step_ratio"] == pytest.approx(alloc["step_s"] / alloc["baseline_step_s"], rel=1e-2)
  score = rows["score-tiny-b2"]
  assert score["images"] == 4 and score["plain_prompt_len"] == 32
  for key in ("ours_images_per_s", "plain_images_per_s", "ours_with_embed_images_per_s",
              "ratio", "ratio_with_embed"):
    assert score[key] > 0, key
  assert score["ratio"] == pytest.approx(score["ours_images_per_s"] / score["plain_images_per_s"],
                                         rel=2e-2)


def _check_table(records, table):
  assert table[0] == "| " + " | ".join(gpubench.TABLE_HEAD) + " |"
  body = table[2:]
  assert [row.split(" | ")[0].strip("| ") for row in body] == [r["config"] for r in records[1:]]
  assert all(row.count("|") == len(gpubench.TABLE_HEAD) + 1 for row in body)
  assert "skipped: an emulated device memory pool needs a GPU" in body[1]


def test_budget_exhaustion_skips_every_configuration_cleanly(monkeypatch):
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  for name in gpubench.CONFIG_SETS:
    lines: list[str] = []
    records = gpubench.main(name, budget_s=0, out=lines.append)
    assert [r["status"] for r in records] == ["skipped"] * len(records)
    assert all(r["reason"] == "time budget ran out before this configuration" for r in records)
    assert len(_json_lines(lines)) == len(records) + 1


def test_budget_running_out_midway_skips_the_rest(monkeypatch):
  now = [0.0]
  ctx = gpubench.Context("cpu", "cpu", deadline=10.0, isolate=False, clock=lambda: now[0])

  def fake(spec, ctx):
    now[0] += 6.0  # Each run takes 6 of the 10 seconds.
    return gpubench.record(spec, step_s=1.0)
  monkeypatch.setattr(gpubench, "run_measured", fake)
  specs = [gpubench.Spec(f"s{i}", model="tiny") for i in range(4)]
  records = gpubench.run_all(specs, ctx, out=lambda _: None)
  assert [r["status"] for r in records] == ["ok", "ok", "skipped", "skipped"]


def test_a_child_still_running_at_the_deadline_is_killed_and_reported():
  spec = gpubench.Spec("slow", model="tiny", batch=2, seqlen=16)
  rec = gpubench.run_child(spec, dict.fromkeys(gpubench.ENV_KEYS), timeout_s=0.2)
  assert rec["status"] == "skipped" and "during" in rec["reason"]
  assert set(gpubench.FIELDS) <= set(rec)


def test_mem_fraction_for_a_12_gib_pool():
  assert gpubench.mem_fraction(12 * GIB, 80 * GIB) == 0.15
  h100 = 81559 * 2 ** 20  # nvidia-smi's memory.total of an H100 80GB, MiB.
  f = gpubench.mem_fraction(12 * GIB, h100)
  assert f == 0.150663  # 12288 / 81559 = 0.1506639..., rounded down
  assert 12 * GIB - h100 * 1e-6 < f * h100 <= 12 * GIB
  assert gpubench.mem_fraction(12 * GIB, 12 * GIB) == 1.0
  with pytest.raises(UserError, match="does not fit"):
    gpubench.mem_fraction(12 * GIB, 8 * GIB)
  pool = gpubench.Spec("p", pool_gib=12.0)
  assert gpubench.spec_env(pool, 80 * GIB) == {
      "XLA_PYTHON_CLIENT_PREALLOCATE": "true", "XLA_PYTHON_CLIENT_ALLOCATOR": None,
      "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.150000"}
  users = gpubench.spec_env(gpubench.Spec("u", allocator="users"), None)
  assert users["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert users["XLA_PYTHON_CLIENT_ALLOCATOR"] == "platform"
  assert set(gpubench.spec_env(gpubench.Spec("d"), None).values()) == {None}
  with pytest.raises(UserError, match="--device-memory-gib"):
    gpubench.spec_env(pool, None)
  env = gpubench.child_environment({"XLA_PYTHON_CLIENT_PREALLOCATE": None,
                                    "XLA_PYTHON_CLIENT_ALLOCATOR": "platform"})
  assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in env
  assert env["XLA_PYTHON_CLIENT_ALLOCATOR"] == "platform"


def test_flops_of_a_small_config_by_hand():
  cfg = config_lib.from_dict(_SMALL)
  # seqlen 5: S = 4 image + 4 text positions; the last layer works at Q = 2 loss positions.
  # Per example, 2 m k n per matmul:
  #  layer 0 (S=8): q 2*8*4*4=256, kv 2*8*4*4=256, scores 2*8*8*4=512, mix 512,
  #                 out 256, mlp in 2*8*4*16=1024, mlp out 2*8*8*4=512     -> 3328
  #  layer 1 (Q=2): q 64, kv (all S) 256, scores 2*2*8*4=128, mix 128,
  #                 out 64, mlp in 256, mlp out 128                        -> 1024
  #  logits 2*2*4*16 = 256.                                    forward F = 4608
  #  activation gradients: F + scores and mix again (512+512+128+128)  = 5888
  #  weight gradients, attn: q, kv, out = 768 + 384                    = 1152
  assert gpubench.step_flops(cfg, "attn", 2, 5) == 2 * (4608 + 5888 + 1152)
  # llm: every decoder weight and the (tied) embedding: 2304 + 768 + 256.
  assert gpubench.step_flops(cfg, "llm", 2, 5) == 2 * (4608 + 5888 + 3328)
  # lora: the adapted weights' full gradients, not the embedding's.
  assert gpubench.step_flops(cfg, "lora", 2, 5) == 2 * (4608 + 5888 + 3072)
  # Scoring, seqlen 5 (prompt only): S = 9, one output position, 2 logits.
  #  layer 0: 288 + 288 + 648 + 648 + 288 + 1152 + 576 = 3888
  #  layer 1: 32 + 288 + 72 + 72 + 32 + 128 + 64 = 688;  logits 2*1*4*2 = 16
  assert gpubench.score_flops(cfg, 3, 5) == 3 * (3888 + 688 + 16)


def test_mfu_uses_the_device_peak():
  assert gpubench.peak_bf16_flops("NVIDIA H100 80GB HBM3", "gpu") == 989e12
  assert gpubench.peak_bf16_flops("NVIDIA H200", "gpu") == 989e12
  assert gpubench.peak_bf16_flops("NVIDIA H100 PCIe", "gpu") == 756e12
  assert gpubench.peak_bf16_flops("NVIDIA GeForce RTX 4070", "gpu") == 58.3e12
  assert gpubench.peak_bf16_flops("NVIDIA GeForce RTX 4070 Ti", "gpu") is None
  assert gpubench.peak_bf16_flops("cpu", "cpu") is None
  ctx = gpubench.Context("gpu", "NVIDIA H100 80GB HBM3", 1e9, True)
  rec = gpubench.finish(gpubench.record(gpubench.Spec("x"), flops_per_step=1.978e12,
                                        step_s=0.01, device_kind="NVIDIA H100 80GB HBM3"), ctx)
  assert rec["peak_flops"] == 989e12 and rec["mfu"] == pytest.approx(0.2)
  ctx.peak_override = 100e12
  assert gpubench.finish(dict(rec), ctx)["mfu"] == pytest.approx(1.978)


@pytest.mark.parametrize("limit", [1, 7, 64])
def test_largest_fitting_finds_the_threshold_from_any_guess(limit):
  for threshold in sorted({0, 1, 2, 3, 5, 13, limit - 1, limit}):
    for guess in (1, 2, 4, 13, 20, limit):
      probes = []

      def fits(b, probes=probes, threshold=threshold):
        assert 1 <= b <= limit
        probes.append(b)
        return b <= threshold
      assert gpubench.largest_fitting(fits, guess, limit) == min(threshold, limit)
      if 1 <= guess == threshold < limit:
        assert probes == [guess, guess + 1]  # A right prediction costs two runs.


def test_largest_batch_against_the_planner(monkeypatch):
  calls = []

  def child(spec, env, timeout_s):
    calls.append((spec.batch, spec.steps, env["XLA_PYTHON_CLIENT_MEM_FRACTION"]))
    return gpubench.record(spec, "ok" if spec.batch <= 13 else "oom")
  monkeypatch.setattr(gpubench, "run_child", child)
  monkeypatch.setattr(gpubench, "planned_largest", lambda spec: 16)
  ctx = gpubench.Context("gpu", "NVIDIA H100 80GB HBM3", 1e12, True, total_bytes=80 * GIB)
  spec = gpubench.Spec("largest", kind="largest", pool_gib=12.0)
  rec = gpubench.run_one(spec, ctx)
  assert rec["status"] == "ok" and rec["batch"] == 13 and rec["predicted"] == 16
  assert rec["percent_error"] == pytest.approx(23.1)
  assert all(frac == "0.150000" for _, _, frac in calls)
  assert [b for b, _, _ in calls] == [b for b, _ in rec["probes"]]
  assert "planner 16 (+23.1%)" in gpubench.table_row(rec)
  monkeypatch.setattr(gpubench, "run_child",
                      lambda spec, env, t: gpubench.record(spec, "error", error="boom"))
  rec = gpubench.run_one(spec, ctx)
  assert rec["status"] == "error" and rec["error"] == "boom" and rec["batch"] is None


def test_the_planner_runs_in_a_cpu_process_and_stops_at_the_deadline():
  spec = gpubench.Spec("plan", kind="largest", model="tiny", seqlen=16, pool_gib=12.0, limit=1)
  assert gpubench.PlannerJob(spec).result(timeout_s=300) == (1, None)
  job = gpubench.PlannerJob(spec)
  assert job.result(timeout_s=0.1) == (None, "time budget ran out while planning")
  assert job.proc.poll() is not None  # Killed, not left running.


def test_configuration_lists():
  default = gpubench.configs("default", "gpu")
  assert [(s.kind, s.batch, s.pool_gib) for s in default] == [
      ("train", 2, None), ("train", 4, None), ("train", 8, None), ("train", 4, 12.0),
      ("largest", 4, 12.0), ("allocator", 4, None), ("score", 8, None), ("score", 32, None)]
  assert {(s.model, s.trainable, s.optimizer, s.param_dtype, s.seqlen) for s in default} == {
      ("paligemma-3b-pt-224", "attn", "sgd", "bfloat16", 64)}
  assert all(s.steps >= 10 for s in default)
  recipes = {(s.model, s.trainable, s.remat, s.batch) for s in gpubench.configs("recipes", "gpu")}
  assert recipes == {("paligemma-3b-pt-224", "lora", "none", 4),
                     ("paligemma-3b-pt-224", "llm", "full", 4),
                     ("paligemma2-3b-pt-224", "attn", "none", 2),
                     ("paligemma2-3b-pt-224", "attn", "none", 4),
                     ("paligemma2-3b-pt-448", "attn", "none", 2),
                     ("paligemma2-3b-pt-448", "attn", "none", 4)}
  assert [s.name for s in gpubench.configs("default", "gpu", ["score-b8"])] == ["score-b8"]
  with pytest.raises(UserError, match="unknown bench config set"):
    gpubench.configs("nope", "gpu")
  with pytest.raises(UserError, match="no configuration named"):
    gpubench.configs("default", "cpu", ["3b-b2"])
  with pytest.raises(UserError, match="vision encoder"):
    gpubench.Spec("x", trainable="all")
  with pytest.raises(UserError, match="kind"):
    gpubench.Spec("x", kind="nope")


def test_make_batch_layout():
  cfg = config_lib.preset("tiny")
  b = gpubench.make_batch(cfg, 3, 16, jnp.bfloat16, seed=1)
  assert b.text.shape == (3, 16) and b.zimg.shape == (3, cfg.num_patches, cfg.llm.width)
  assert b.zimg.dtype == jnp.bfloat16 and b.image is None
  assert np.all(b.mask_input == 1) and np.all(b.prefix_len == 14)
  assert np.array_equal(b.mask_ar[0], (np.arange(16) >= 14).astype(np.int32))
  # loss_idx[t] is an output position whose next token is an answer token.
  rows = np.arange(3)[:, None]
  assert np.all(b.mask_loss[rows, b.loss_idx + 1] == 1) and np.all(b.loss_w == 1)
  prompt = gpubench.make_batch(cfg, 3, 16, jnp.float32, 1, answer=False, image="pixels")
  padded = gpubench.make_batch(cfg, 3, 16, jnp.float32, 1, answer=False, image=None, pad_to=32)
  assert prompt.image.shape == (3, 224, 224, 3) and prompt.zimg is None
  assert np.all(prompt.mask_ar == 0) and np.all(prompt.prefix_len == 16)
  assert np.array_equal(padded.text[:, :16], prompt.text) and np.all(padded.text[:, 16:] == 0)
  assert np.array_equal(padded.mask_input.sum(1), [16, 16, 16])
  assert padded.image is None and padded.zimg is None
