"""train.py: the step (accumulation, shardings), the loop (guard, restarts, resume), stages."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest

from palijudge import configs
from palijudge import checkpoint, loader, losses, train
from palijudge import params as params_lib
from palijudge.data import examples as data_lib
from palijudge.data import splits, synthetic
from palijudge.data.batch import Batch, loss_index
from palijudge.data.examples import DEFAULT_PROMPT
from palijudge.errors import UserError
from testing import FIXTURES, PLAY
from palijudge.configs import EvalConfig

ECFG = EvalConfig(prompt=DEFAULT_PROMPT)  # train.fit's prompt and GIF frame.

FX = FIXTURES / "paligemma-tiny"


def _fixture_step(accum: int, batch_rows=slice(None)):
  from palijudge.model import config
  from palijudge.model import paligemma as model_lib
  cfg = config.from_json_file(FX / "config.json")
  params = checkpoint.load_params(FX / "params.npz", model_lib.param_shapes(cfg),
                                  lambda _: np.float32)
  ref = np.load(FX / "reference.npz")
  batch = {k[6:]: ref[k][batch_rows] for k in ref.files if k.startswith("batch/")}
  batch["loss_idx"], batch["loss_w"] = loss_index(batch["mask_loss"])
  batch["label"] = np.array([1, 0, 0, 0], np.int32)[batch_rows]
  batch = Batch(**batch)
  trainable, frozen = params_lib.split(params, "attn")
  tx = optax.sgd(0.03)
  state = train.init_state(trainable, tx)
  mesh = params_lib.make_mesh(jax.devices()[:1])
  step = train.jit_train_step(model_lib.build(cfg), tx, losses.LossConfig(), (14, 13), mesh,
                              params_lib.tree_shardings(mesh, state),
                              params_lib.tree_shardings(mesh, frozen), accum=accum)
  new_state, metrics = step(state, batch, frozen)
  return float(metrics["loss"]), jax.device_get(new_state.params), float(ref["loss"])


def test_accumulation_matches_the_large_batch():
  loss1, params1, ref_loss = _fixture_step(accum=1)
  loss2, params2, _ = _fixture_step(accum=2)
  loss4, params4, _ = _fixture_step(accum=4)
  assert loss1 == pytest.approx(ref_loss, abs=1e-5)
  assert loss2 == pytest.approx(loss1, abs=1e-5) and loss4 == pytest.approx(loss1, abs=1e-5)
  for other in (params2, params4):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params1, other)


# The start of the multi-device scripts below (each runs in a fresh process, where
# XLA_FLAGS can still force several CPU devices): the fixture model in f32 and its batch.
FIXTURE_PRELUDE = """
  import json, re
  import jax, numpy as np, optax
  from palijudge import checkpoint, losses, train
  from palijudge import params as params_lib
  from palijudge.model import config
  from palijudge.model import paligemma as model_lib
  from palijudge.data.batch import Batch, loss_index
  FX = "{fx}"
  cfg = config.from_json_file(FX + "/config.json")
  params = checkpoint.load_params(FX + "/params.npz", model_lib.param_shapes(cfg),
                                  lambda _: np.float32)
  ref = np.load(FX + "/reference.npz")
"""


ACCUM_SCRIPT = textwrap.dedent(FIXTURE_PRELUDE + """
  rows = np.arange(16) % 4
  batch = {{k[6:]: ref[k][rows] for k in ref.files if k.startswith("batch/")}}
  batch["loss_idx"], batch["loss_w"] = loss_index(batch["mask_loss"])
  batch["label"] = np.array([1, 0, 0, 0], np.int32)[rows]
  batch = Batch(**batch)
  assert len(jax.devices()) == 4
  mesh = params_lib.make_mesh()  # (4, 1): data parallel, parameters replicated.
  trainable, frozen = params_lib.split(params, "attn")
  tx = optax.sgd(0.03)
  contiguous = lambda b, a: jax.tree.map(lambda x: x.reshape(a, x.shape[0] // a, *x.shape[1:]), b)
  out = {{}}
  for name, split in (("strided", train.micro_batches), ("contiguous", contiguous)):
    train.micro_batches = split  # The split the step uses (contiguous: the old one).
    for accum in (1, 2, 4):
      state = train.init_state(trainable, tx)
      ssh, fsh = params_lib.tree_shardings(mesh, state), params_lib.tree_shardings(mesh, frozen)
      step = train.jit_train_step(model_lib.build(cfg), tx, losses.LossConfig(), (14, 13), mesh,
                                  ssh, fsh, accum=accum)
      state, frozen_p = params_lib.place(state, ssh), params_lib.place(frozen, fsh)
      gbatch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, params_lib.BATCH))
      compiled = step.lower(state, gbatch, frozen_p).compile()
      gathers = len(re.findall(r"= [^ ]+ all-gather(?:-start)?\\(", compiled.as_text()))
      new, m = compiled(state, gbatch, frozen_p)
      flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(new.params))])
      out[f"{{name}}{{accum}}"] = {{"gathers": gathers, "loss": float(m["loss"]),
                                   "params": flat[:4096].tolist()}}
  print(json.dumps(out))
""")


def test_accumulation_keeps_each_devices_rows():
  """Strided micro-batches on 4 devices: no all-gather in the step (the contiguous split had
  some), and the same loss and update as one large batch."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, "-c", ACCUM_SCRIPT.format(fx=FX)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  print({k: v["gathers"] for k, v in out.items()})  # The counts the note reports.
  assert out["strided2"]["gathers"] == 0 and out["strided4"]["gathers"] == 0
  assert out["contiguous2"]["gathers"] > 0 and out["contiguous4"]["gathers"] > 0
  for accum in (2, 4):
    got, want = out[f"strided{accum}"], out["strided1"]
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
    np.testing.assert_allclose(got["params"], want["params"], atol=1e-6)


# The users' logged losses, every 32 steps (MISSION.md and the source write-up).
HEALTHY = [0.3417, 0.3162, 0.2927, 0.2114, 0.1467, 0.4221, 0.0181, 0.0043]
DIVERGED = [0.1789, 1.4870, 1.4092, 1.1224, 1.1452, 1.1013, 1.2169]


def _replay(logged, seed=0, noise=0.0):
  """Per-step losses: each logged value held for 32 steps (optionally with noise)."""
  rng = np.random.default_rng(seed)
  steps = np.repeat(logged, 32)
  return steps * np.exp(noise * rng.standard_normal(len(steps)))


def _first_stop(losses, threshold=1.0):
  g = train.Guard(threshold)
  return next((s for s, loss in enumerate(losses, 1) if g.check(s, float(loss))), None)


def test_guard_passes_the_users_healthy_run_and_catches_their_diverged_one():
  assert _first_stop(_replay(HEALTHY)) is None
  stop = _first_stop(_replay(DIVERGED))
  assert stop is not None and stop - 32 <= 64  # Caught within 64 steps of the jump.
  for seed in range(5):  # Batch-2 noise around the same curves.
    assert _first_stop(_replay(HEALTHY, seed, noise=0.8)) is None
    assert _first_stop(_replay(DIVERGED, seed, noise=0.3)) is not None


def test_guard_rules():
  g = train.Guard(threshold=1.0, window=4, patience=3)
  assert not any(g.check(s, 0.5) for s in range(1, 10))
  assert not g.check(10, 5.0)  # One spike: the median stays below 1.
  assert not any(g.check(s, 0.5) for s in range(11, 14))
  whys = [g.check(s, 2.0) for s in range(14, 22)]
  assert not any(whys[:3]) and "stayed above 1 for 3 steps (2 at step 17)" in whys[3]
  never_below = train.Guard(threshold=1.0, window=2, patience=1)  # Not learning yet is no divergence.
  assert not any(never_below.check(s, 3.0) for s in range(1, 10))
  assert "nan" in train.Guard(0.0).check(1, float("nan"))
  assert not any(train.Guard(0.0).check(s, 1e6) for s in range(1, 5))  # 0: finite check only.


def _opts(**kw) -> train.Stage:
  return train.Stage(**kw)


def test_divergence_restarts_then_keeps_what_was_trained(tiny_lm, tiny_examples):
  bad = train.TrainConfig(lr=1e30, steps=3, batch_size=2, max_restarts=1, seed=7)
  logs = []
  res = train.fit(tiny_lm, tiny_examples[1], bad, ECFG, _opts(), log=logs.append)
  assert any("restart 1/1 with seed 8" in line for line in logs), logs
  assert res.diverged and res.seed == 8 and res.restarts == 1
  assert any(l.startswith("warning: training diverged: loss nan") for l in logs), logs
  # Nothing good was seen: the model is kept as it was before training.
  for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(tiny_lm.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_feature_cache_gives_the_same_training(tmp_project, tiny_examples):
  lm = loader.load(loader.resolve("tiny", cache_dir=str(tmp_project.cache)), trainable="attn")
  tcfg = train.TrainConfig(steps=3, batch_size=2, seed=1)
  with_cache = train.fit(lm, tiny_examples[1], tcfg, ECFG, _opts(), log=lambda _: None)
  without = train.fit(lm, tiny_examples[1], tcfg, ECFG, _opts(use_feature_cache=False),
                      log=lambda _: None)
  np.testing.assert_allclose([h[2] for h in with_cache.history],
                             [h[2] for h in without.history], rtol=1e-5)
  assert list((tmp_project.cache / "features").rglob("*.npy"))  # Kept on disk for later runs.


RESUME_ARGS = ["-d", "s", "-w", "r", "--model", "tiny", "--steps", "12", "--batch", "2",
               "--trainable", "attn", "--save-every", "1", "--print-every", "1"]


def _learn(cwd, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, str(PLAY / "03-do_learn.py"), "--project", str(cwd),
                           *RESUME_ARGS, *extra], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.mark.script
def test_resume_after_sigkill_reaches_the_uninterrupted_result(tiny_project, tmp_path):
  root = tiny_project.root
  shutil.copytree(root / "cache", tmp_path / "cache", ignore=shutil.ignore_patterns("features"))
  synthetic.make_dataset(tmp_path / "dataset", n=12, seed=5)
  data = data_lib.read_jsonl(tmp_path / "dataset/data.jsonl", tmp_path / "dataset")
  tr, va = splits.split(data, 4, 0)
  data_lib.write_jsonl(tmp_path / "dataset/s/train.jsonl", tr)
  data_lib.write_jsonl(tmp_path / "dataset/s/valid.jsonl", va)
  out, err = _learn(tmp_path).communicate()
  assert "saved checkpoints/r.npz" in out, err
  with np.load(tmp_path / "checkpoints/r.npz") as f:
    reference = {k: f[k] for k in f.files if k.startswith("params/")}
  state = tmp_path / "checkpoints/r.state.npz"
  assert not state.exists()  # Removed once the run finished.
  (tmp_path / "checkpoints/r.npz").unlink()
  rng = random.Random(0)
  for _ in range(3):  # Kill at random moments, saves included; resume each time.
    proc = _learn(tmp_path, "--resume")
    deadline = time.time() + 120
    kill_after = rng.randint(1, 9)  # A step inside the run: killed while training or saving.
    while time.time() < deadline and proc.poll() is None and _saved_step(state) < kill_after:
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    if state.exists():
      train.load_state(str(state), _state_like(root))  # The last good state always loads.
  # The killed runs' records say so, and kept their log up to the kill (streamed).
  from palijudge.experiments.records import RunRecord
  killed = [RunRecord.load(p) for p in sorted((tmp_path / "experiments").iterdir())[1:]]
  assert killed and all(r.status() in ("killed", "") for r in killed), [r.status() for r in killed]
  assert any(r.steps() and r.steps()[0]["stage"] == "stage 1" for r in killed)
  out, err = _learn(tmp_path, "--resume").communicate()
  assert "saved checkpoints/r.npz" in out, err
  # One run, one record: every resume continued the killed run's record (r.2, beside the
  # reference run's r), its log holding each step once, in order.
  assert sorted(p.name for p in (tmp_path / "experiments").iterdir()) == ["r", "r.2"]
  record = RunRecord.load(tmp_path / "experiments/r.2")
  assert [s["step"] for s in record.steps()] == list(range(1, 13))
  assert record.status() == "finished" and record.config()["resumed"]
  with np.load(tmp_path / "checkpoints/r.npz") as resumed:
    for key, value in reference.items():
      np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def _saved_step(path) -> int:
  """The step of the train state at `path` (0: none yet, or caught while being replaced)."""
  try:
    return int(checkpoint.read_meta(path).get("step", 0))
  except Exception:  # noqa: BLE001 - absent, or replaced between exists() and open().
    return 0


def _state_like(root):
  spec = loader.resolve("tiny", cache_dir=str(root / "cache"))
  lm = loader.load(spec, trainable="attn")
  trainable, _ = params_lib.split(lm.params, "attn")
  trainable = jax.tree.map(lambda a: np.asarray(a, np.float32), trainable)
  return train.init_state(trainable, train.make_optimizer(train.TrainConfig(steps=12)))


SHARDING_SCRIPT = textwrap.dedent(FIXTURE_PRELUDE + """
  batch = {{k[6:]: np.concatenate([ref[k]] * 2) for k in ref.files if k.startswith("batch/")}}
  batch["loss_idx"], batch["loss_w"] = loss_index(batch["mask_loss"])
  batch["label"] = np.array([1, 0, 0, 0] * 2, np.int32)
  batch = Batch(**batch)
  assert len(jax.devices()) == 8
  out = []
  for devices, fsdp in ((jax.devices()[:1], False), (jax.devices(), False), (jax.devices(), True)):
    mesh = params_lib.make_mesh(devices, len(devices) if fsdp else 1)
    trainable, frozen = params_lib.split(params, "llm")
    tx = optax.adam(1e-3)
    state = train.init_state(trainable, tx)
    ssh = params_lib.tree_shardings(mesh, state)
    fsh = params_lib.tree_shardings(mesh, frozen)
    step = train.jit_train_step(model_lib.build(cfg), tx, losses.LossConfig(), (14, 13), mesh,
                                ssh, fsh)
    state, frozen = params_lib.place(state, ssh), params_lib.place(frozen, fsh)
    losses_ = []
    for _ in range(3):
      state, m = step(state, batch, frozen)
      losses_.append(float(m["loss"]))
    if fsdp:
      w = state.params["llm"]["embedder"]["input_embedding"]
      assert len(w.sharding.device_set) == 8 and w.addressable_shards[0].data.shape[0] == 64
    out.append(losses_)
  print(out)
  np.testing.assert_allclose(out[1], out[0], atol=1e-4)
  np.testing.assert_allclose(out[2], out[0], atol=1e-4)
  print("SHARDING OK")
""")


def test_data_parallel_and_fsdp_match_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT.format(fx=FX)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert "SHARDING OK" in proc.stdout, proc.stdout + proc.stderr




def test_tiny_gemma2_trains(tmp_path):
  """The Gemma 2 decoder goes through the same training path and learns."""
  spec = loader.write_random_model("tiny-gemma2", str(tmp_path / "cache"), seed=0)
  lm = loader.load(spec, trainable="all")
  examples = data_lib.read_jsonl(synthetic.make_dataset(tmp_path / "data", n=8, seed=1))
  tcfg = train.TrainConfig(trainable="all", optimizer="adam", lr=2e-3, steps=12, batch_size=4)
  result = train.fit(lm, examples, tcfg, ECFG, _opts(), log=lambda _: None)
  losses_ = [h[2] for h in result.history]
  assert np.mean(losses_[-3:]) < 0.5 * np.mean(losses_[:3]), losses_


def test_lora_alpha_is_saved_and_used_on_load(tiny_lm, tiny_examples, tmp_path):
  """An adapter-only checkpoint records its alpha; loading it rebuilds the same model."""
  from palijudge import learn
  from palijudge.evaluation import scoring
  lm = loader.load(tiny_lm.spec, trainable="lora")
  tcfg = train.TrainConfig(trainable="lora", steps=3, batch_size=2, lr=0.1, lora_alpha=32.0,
                           optimizer="adam")
  ecfg = configs.EvalConfig().resolved()
  res = learn.learn(lm, tiny_examples[1], tiny_examples[2], tcfg, ecfg,
                    names=("a", "t", "v"), save_to=str(tmp_path / "l.npz"), log=lambda _: None)
  assert checkpoint.read_meta(tmp_path / "l.npz")["train_config"]["lora_alpha"] == 32.0
  loaded = loader.load(loader.resolve(str(tmp_path / "l.npz")), trainable="lora")
  assert loaded.model.lora_alpha == 32.0
  again = scoring.evaluate(loaded, tiny_examples[2], ecfg)
  np.testing.assert_allclose(again.p_yes, res.after["v"].p_yes, atol=1e-5)


def test_guard_passes_every_recorded_healthy_run():
  """Recorded default-recipe runs (BENCHMARKS.md): none went above 1 and stayed there."""
  import json
  doc = json.loads((FIXTURES / "loss_curves.json").read_text())
  assert len(doc["curves"]) >= 10
  for c in doc["curves"]:
    assert len(c["loss"]) == 256
    assert _first_stop(c["loss"]) is None, (c["model"], c["lr"], c["seed"])
    # The recorded curve joined to the users' diverged tail is caught within 64 steps.
    tail = _replay(DIVERGED[1:])
    stop = _first_stop(list(c["loss"]) + list(tail))
    assert stop is not None and stop - 256 <= 64, (c["lr"], c["seed"], stop)


def test_resume_refuses_a_state_saved_by_another_recipe(tiny_lm, tiny_examples, tmp_path):
  _, tr, va = tiny_examples
  state = str(tmp_path / "x.state.npz")
  tcfg = train.TrainConfig(steps=3, batch_size=2, save_every=1)
  opts, ecfg = train.Stage(state_path=state, resume=True), EvalConfig(prompt="p")
  train.fit(tiny_lm, tr, tcfg, ecfg, opts, log=lambda _: None)
  assert checkpoint.read_meta(state)["step"] == 2  # Saved before the last step.
  for changed, want in [
      (dict(tcfg=dataclasses.replace(tcfg, lr=0.01)), "lr: 0.03 -> 0.01"),
      (dict(tcfg=dataclasses.replace(tcfg, batch_size=4)), "batch_size: 2 -> 4"),
      (dict(tcfg=dataclasses.replace(tcfg, loss=losses.LossConfig(kind="focal"))),
       "loss.kind: ce -> focal"),
      (dict(examples=va), "data: "),
      (dict(ecfg=EvalConfig(prompt="q")), "prompt: p -> q")]:
    kw = dict(dict(tcfg=tcfg, examples=tr, ecfg=ecfg), **changed)
    with pytest.raises(UserError, match="another recipe") as e:
      train.fit(tiny_lm, kw["examples"], kw["tcfg"], kw["ecfg"], opts, log=lambda _: None)
    assert want in str(e.value) and "x.state.npz" in str(e.value)
  logs = []  # The same recipe (progress lines aside) resumes.
  train.fit(tiny_lm, tr, dataclasses.replace(tcfg, print_every=1), ecfg, opts, log=logs.append)
  assert any(l.startswith("resumed from") and l.endswith("at step 2") for l in logs)


# --- The step loop: metrics one step late, the schedule as data, evaluations ---------------


def _compiles(fn) -> int:
  """How many XLA backend compilations `fn()` runs (jax's own compile event)."""
  from jax._src import dispatch
  seen = []
  listener = lambda event, *_a, **_k: seen.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return seen.count(dispatch.BACKEND_COMPILE_EVENT)


def test_another_step_count_lr_or_warmup_compiles_no_new_train_step(tiny_lm, tiny_examples):
  """The schedule is data: a search trial or stage with other --steps reuses the step."""
  tr = tiny_examples[1]
  fit = lambda tcfg: train.fit(tiny_lm, tr, tcfg, ECFG, _opts(), log=lambda _: None)
  fit(train.TrainConfig(steps=3, batch_size=2))
  other = train.TrainConfig(steps=5, batch_size=2, lr=0.01, warmup_percent=0.3, seed=4)
  assert _compiles(lambda: fit(other)) == 0
  # The counter counts: another batch size is another program.
  assert _compiles(lambda: fit(train.TrainConfig(steps=2, batch_size=4))) >= 1


def test_metrics_read_a_step_late_are_those_read_at_once(tiny_lm, tiny_examples, tmp_path):
  """History (lr, loss, grad norm per step) as when every step was read before the next:
  --save-every 1 makes the loop read each step at once (it needs each state)."""
  tr = tiny_examples[1]
  tcfg = train.TrainConfig(steps=7, batch_size=2, seed=2)
  rows, lines = [], []
  late = train.fit(tiny_lm, tr, tcfg, ECFG, _opts(on_step=lambda *r: rows.append(r)),
                   log=lines.append)
  at_once = train.fit(tiny_lm, tr, dataclasses.replace(tcfg, save_every=1), ECFG,
                      _opts(state_path=str(tmp_path / "s.npz")), log=lambda _: None)
  assert [h[:4] for h in late.history] == [h[:4] for h in at_once.history]
  assert rows == late.history and [h[0] for h in rows] == list(range(1, 8))
  want = train.colab_lr(tcfg.lr, 7, tcfg.warmup_percent)(np.arange(1, 8))
  assert [h[1] for h in rows] == [float(x) for x in want]
  assert [l for l in lines if l.startswith("step:")] == [
      train.progress_line(s, 7, lr, loss) for s, lr, loss, *_ in rows if s in (1, 7)]


def test_a_divergence_read_a_step_late_keeps_the_snapshot_state(tiny_lm, tiny_examples,
                                                               tmp_path, monkeypatch):
  """Diverged at step 40 (seen after step 41 was dispatched): the state kept is the one of
  step 32, the guard's snapshot, exactly as the train state saved at step 32."""
  check = train.Guard.check
  monkeypatch.setattr(train.Guard, "check", lambda self, step, loss: (
      "forced at step 40" if step == 40 else check(self, step, loss)))
  tcfg = train.TrainConfig(steps=48, batch_size=2, diverge_loss=100.0, save_every=32)
  state = str(tmp_path / "s.npz")
  logs = []
  res = train.fit(tiny_lm, tiny_examples[1], tcfg, ECFG, _opts(state_path=state), log=logs.append)
  assert res.diverged == "forced at step 40" and res.kept_step == 32
  assert [h[0] for h in res.history] == list(range(1, 41))
  saved, _ = train.load_state(state, train.init_state(
      params_lib.split(tiny_lm.params, "attn")[0], train.make_optimizer(tcfg)))
  kept = params_lib.split(res.params, "attn")[0]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               saved.params, kept)


def test_evaluations_keep_the_best_state_and_stop_early(tiny_lm, tiny_examples):
  scores = {2: 0.5, 4: 0.9, 6: 0.7, 8: 0.6, 10: 0.95}
  seen = {}

  def score(step, params):
    seen[step] = jax.device_get(params_lib.split(params, "attn")[0])
    return scores[step]
  tcfg = train.TrainConfig(steps=12, batch_size=2)
  logs = []
  ev = train.Evaluation(2, score, "f1", patience=2)
  res = train.fit(tiny_lm, tiny_examples[1], tcfg, ECFG, _opts(evaluation=ev), log=logs.append)
  assert sorted(seen) == [2, 4, 6, 8] and len(res.history) == 8  # Stopped after 2 worse.
  assert res.kept_step == 4
  assert "early stop at step 8: valid f1 did not improve for 2 evaluations" in logs
  assert "keeping the state of step 4, where valid f1 was best (0.9000)" in logs
  jax.tree.map(np.testing.assert_array_equal, seen[4],
               jax.device_get(params_lib.split(res.params, "attn")[0]))
  # Without patience every evaluation runs, the last step's included.
  seen.clear()
  scores[12] = 0.1
  res = train.fit(tiny_lm, tiny_examples[1], tcfg, ECFG, _opts(evaluation=train.Evaluation(
      2, score, "f1")), log=lambda _: None)
  assert sorted(seen) == [2, 4, 6, 8, 10, 12] and res.kept_step == 10
