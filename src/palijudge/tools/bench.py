"""`make bench`: our paths against the plain approach of the users' original scripts.

The baseline ("plain") is the approach of big_vision's fine-tuning colab, on
which the users' scripts are built, written here on this project's network so
that only the approach differs (it is not big_vision's own code):
- train step: text padded to 128 tokens, vocabulary logits at every text
  position, the vision encoder run inside every step, SGD; batch 2.
- prediction: greedy decoding of the prompt padded to 128 tokens, up to 128 new
  tokens with early stop once every row has produced eos (an untrained model
  never emits eos and uses all 128), the vision encoder run for every image
  every time, images decoded from disk every time; batch 2.
Ours is what `03-do_learn.py` and `04-validate.py` do, with everything they
really do inside the timer: image decoding, the first computation of each
image's tokens for the frozen-encoder cache, bucketing, scoring by one pass.

Rows (one JSON line each): load + compile (cold: the persistent compilation
cache is off), the train step with the encoder inside both paths, the train
step as ours really runs it (image tokens cached) against the same plain step,
classifying every image once, the whole 256-step `03-do_learn` iteration as the
users run it, the iteration's floor (its matrix FLOPs over the best f32 GEMM rate of
the machine: the fewest CPU seconds any f32 implementation could take), and the
cold and warm start of a real `03-do_learn.py` run.
The CPU model: image 224, ViT patch 14 / width 384 / depth 12 / mlp 1536 /
6 heads; Gemma width 512 / depth 4 / mlp 2048 / 4 heads / 1 KV head /
head_dim 128 / vocab 4096; f32; random weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from palijudge import configs
from palijudge import checkpoint, learn, losses, train
from palijudge.evaluation import scoring
from palijudge import loader as session
from palijudge import params as params_lib
from palijudge.data import examples as data_lib
from palijudge.data import splits, synthetic
from palijudge.data.batch import Batch, Batches, training_stream
from palijudge.configs import DEFAULT_PROMPT, EvalConfig
from palijudge.errors import UserError
from palijudge.model import config
from palijudge.model import paligemma as model_lib

BENCH_CONFIG = dict(image_size=224,
                    img=dict(patch_size=14, width=384, depth=12, mlp_dim=1536, num_heads=6),
                    llm=dict(vocab_size=4096, width=512, depth=4, mlp_dim=2048, num_heads=4,
                             num_kv_heads=1, head_dim=128))
PLAIN_SEQLEN = 128   # The colab pads every text to this length.
PLAIN_MAX_NEW = 128  # ... and decodes up to this many new tokens.
BATCH = 2            # The users' batch, for training and the plain evaluation.


def cpu_seconds() -> float:
  """CPU time of this process and its finished children (user + system), in seconds: on a
  loaded machine wall time flatters or hides; CPU time is steadier."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
  """Wall and CPU seconds since it was made: `with Clock() as c: ...; c.wall, c.cpu`."""

  def __enter__(self):
    self.wall, self.cpu = time.perf_counter(), cpu_seconds()
    return self

  def __exit__(self, *exc):
    self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def _timed(fn, reps: int = 10) -> tuple[float, float]:
  """(seconds of the first call, incl. compile; median seconds of `reps` later calls)."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return first, float(np.median(times))


def _pad_text(batch: Batch, seqlen: int) -> Batch:
  pad = lambda a: np.pad(a, ((0, 0), (0, seqlen - a.shape[1])))
  return batch.replace(text=pad(batch.text), mask_ar=pad(batch.mask_ar),
                       mask_loss=pad(batch.mask_loss), mask_input=pad(batch.mask_input))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _plain_step(model, trainable, frozen, batch):
  """The colab's step: full logits at every text position, SGD at lr 0.03."""
  def loss_fn(t):
    params = params_lib.merge(t, frozen)
    out = model_lib.forward(model, params, batch.inputs().drop_last())
    logits = model_lib.text_logits(model, params, out.pre_logits_BxTxD)
    per_ex = losses.ce_per_example(logits, batch.text[:, 1:], batch.mask_loss[:, 1:])
    return per_ex.mean()
  value, grads = jax.value_and_grad(loss_fn)(trainable)
  return jax.tree.map(lambda p, g: p - 0.03 * g, trainable, grads), value


def _plain_decode(lm, batch: Batch):
  x = _pad_text(batch, PLAIN_SEQLEN).inputs()
  return model_lib.greedy_decode(lm.model, lm.params, x, PLAIN_MAX_NEW, lm.tok.eos_id)


def _plain_classify(lm, examples) -> None:
  """Decode-evaluate `examples` as the colab does: no caches, batch 2, up to 128 tokens."""
  for _, batch in Batches(examples, lm.tok, lm.cfg.image_size, BATCH, DEFAULT_PROMPT,
                          with_suffix=False):
    jax.block_until_ready(_plain_decode(lm, batch))


def _line(name: str, ours: float, plain: float, unit: str, higher_is_better=True, **extra):
  speedup = ours / plain if higher_is_better else plain / ours
  rec = {"measure": name, "ours": round(ours, 4), "plain": round(plain, 4), "unit": unit,
         "speedup": round(speedup, 2), **extra}
  print(json.dumps(rec), flush=True)
  return rec


@dataclasses.dataclass
class Bench:
  spec: session.ModelSpec
  lm: session.LoadedModel
  examples: list
  workdir: str


def setup(workdir: str, n_images: int = 96, model_config: dict = BENCH_CONFIG) -> Bench:
  cfg = config.from_dict(model_config, "bench config")
  tok_path = os.path.join(workdir, "cache", "tok.model")
  synthetic.write_tiny_tokenizer(tok_path)
  weights = os.path.join(workdir, "cache", "bench.npz")
  checkpoint.save(weights, model_lib.init_params(cfg, 0), cfg, {"tokenizer": tok_path})
  spec = session.ModelSpec(cfg, weights, tok_path, "bench")
  lm = session.load(spec, trainable="attn", compute="float32")
  examples = data_lib.read_jsonl(synthetic.make_dataset(os.path.join(workdir, "dataset"),
                                                        n=n_images, seed=0))
  return Bench(spec, lm, examples, workdir)


def _train_batch(b: Bench) -> tuple[list, Batch]:
  return next(iter(Batches(b.examples[:BATCH], b.lm.tok, b.lm.cfg.image_size, BATCH,
                           DEFAULT_PROMPT, with_suffix=True)))


def _our_step(lm):
  trainable, frozen = params_lib.split(lm.params, "attn")
  tcfg = train.TrainConfig()
  tx = train.make_optimizer(tcfg)
  mesh = params_lib.make_mesh(jax.devices()[:1])
  state = train.init_state(jax.tree.map(jnp.array, trainable), tx, tcfg.lr)
  ssh = params_lib.tree_shardings(mesh, state)
  fsh = params_lib.tree_shardings(mesh, frozen)
  step = train.jit_train_step(lm.model, tx, losses.LossConfig(), lm.yes_no_ids, mesh, ssh, fsh)
  return step, [state], frozen


def bench_load_compile(b: Bench) -> list[dict]:
  """Cold start: load the checkpoint, compile the train step and the prediction."""
  chunk, batch = _train_batch(b)
  with Clock() as ours:
    lm = session.load(b.spec, trainable="attn", compute="float32")
    step, state, frozen = _our_step(lm)
    features = session.feature_cache(lm, "attn", "first")
    zbatch = features.attach(chunk, batch)
    jax.block_until_ready(step(state[0], zbatch, frozen))
    scoring.evaluate(lm, b.examples[:BATCH], configs.EvalConfig(eval_batch=8).resolved())
  with Clock() as plain:
    lm = session.load(b.spec, trainable="attn", compute="float32")
    trainable, frozen = params_lib.split(lm.params, "attn")
    jax.block_until_ready(_plain_step(lm.model, jax.tree.map(jnp.array, trainable), frozen,
                                      _pad_text(batch, PLAIN_SEQLEN)))
    _plain_classify(lm, b.examples[:BATCH])
  return [_line("load_and_compile", ours.wall, plain.wall, "s", higher_is_better=False,
                **_cpu(ours, plain), note="cold: no persistent compilation cache")]


def bench_train_step(b: Bench) -> list[dict]:
  lm = b.lm
  chunk, batch = _train_batch(b)
  step, state, frozen = _our_step(lm)
  zbatch = session.feature_cache(lm, "attn", "first").attach(chunk, batch)

  def ours(x):
    def run():
      state[0], m = step(state[0], x, frozen)
      return m["loss"]
    return run
  plain_batch = _pad_text(batch, PLAIN_SEQLEN)
  plain_params = [jax.tree.map(jnp.array, params_lib.split(lm.params, "attn")[0])]

  def plain():
    plain_params[0], loss = _plain_step(lm.model, plain_params[0], frozen, plain_batch)
    return loss
  _, t_enc = _timed(ours(batch))
  _, t_cached = _timed(ours(zbatch))
  _, t_plain = _timed(plain)
  return [_line("train_step", BATCH / t_enc, BATCH / t_plain, "examples/s",
                note="the vision encoder runs inside both steps; batch 2"),
          _line("train_step_cached", BATCH / t_cached, BATCH / t_plain, "examples/s",
                note="ours as it runs: image tokens from the feature cache; plain as above")]


def bench_classify(b: Bench) -> list[dict]:
  """Every image classified once: ours from a cold feature cache, plain by decoding."""
  n = len(b.examples)
  ecfg = configs.EvalConfig().resolved()
  scoring.evaluate(b.lm, b.examples[:8], ecfg)  # Both paths compiled before the timers.
  _plain_classify(b.lm, b.examples[:BATCH])
  with Clock() as ours:
    scoring.evaluate(b.lm, b.examples, ecfg,
                      features=session.feature_cache(b.lm, "attn", "first"))
  with Clock() as plain:
    _plain_classify(b.lm, b.examples)
  return [_line("yes_no_classification", n / ours.wall, n / plain.wall, "images/s",
                **_cpu(ours, plain), images=n,
                ours_method="score, eval batch 8, image tokens computed once (cold)",
                plain_method=f"greedy decode up to {PLAIN_MAX_NEW} tokens, batch 2")]


def _plain_iteration(b: Bench, train_set, valid_set, steps: int) -> None:
  """The colab's loop: decode-evaluate all/train/valid, train, decode-evaluate again."""
  lm = b.lm
  sets = [list(train_set) + list(valid_set), train_set, valid_set]
  for examples in sets:
    _plain_classify(lm, examples)
  trainable, frozen = params_lib.split(lm.params, "attn")
  trainable = jax.tree.map(jnp.array, trainable)
  stream = training_stream(train_set, steps, BATCH, 0)
  for _, batch in Batches(stream, lm.tok, lm.cfg.image_size, BATCH, DEFAULT_PROMPT,
                          with_suffix=True):
    trainable, loss = _plain_step(lm.model, trainable, frozen, _pad_text(batch, PLAIN_SEQLEN))
    float(loss)
  for examples in sets:
    _plain_classify(lm, examples)


def _cpu(ours: Clock, plain: Clock) -> dict:
  """A timed row's CPU seconds (process and children) and the speedup they give."""
  return {"ours_cpu_s": round(ours.cpu, 2), "plain_cpu_s": round(plain.cpu, 2),
          "speedup_cpu": round(plain.cpu / max(ours.cpu, 1e-9), 2)}


def bench_iteration(b: Bench, steps: int) -> list[dict]:
  """One whole 03-do_learn iteration at the users' settings, both paths from cold caches."""
  train_set, valid_set = splits.split(b.examples, 10, 0)
  with Clock() as plain:
    _plain_iteration(b, train_set, valid_set, steps)
  tcfg = train.TrainConfig(steps=steps, print_every=10 ** 6)  # The default recipe: batch 2.
  with Clock() as ours:
    learn.learn(b.lm, train_set, valid_set, tcfg, configs.EvalConfig().resolved(),
                names=("all", "train", "valid"), log=lambda _: None)
  return [_line("do_learn_iteration", ours.wall, plain.wall, "s", higher_is_better=False,
                **_cpu(ours, plain), images=len(b.examples),
                split=f"{len(train_set)}/{len(valid_set)}", train_steps=steps, batch=BATCH)]


# --- The floor: how few CPU seconds the iteration's arithmetic allows ----------------

def matmul_flops(fn, *args) -> int:
  """Multiply-add FLOPs (2 per multiply-add) of every dot and convolution `fn(*args)` runs,
  counted on its jaxpr: a scan's body counts once per iteration (XLA's own cost analysis
  counts a loop's body once), a remat's recomputation is included (it is in the jaxpr of
  the gradient). Element-wise work is left out: a floor, not an estimate."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      depth = int(np.prod([lhs[d] for d in contract]))
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * depth
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape  # (out, in / groups, *window) in the default layout.
      spec = eqn.params["dimension_numbers"].rhs_spec
      per_out = int(np.prod([rhs[d] for d in spec[1:]]))
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * per_out
    elif name == "while":
      raise ValueError("a while loop's trip count is unknown: count it by hand")
    times = eqn.params.get("length", 1) if name == "scan" else 1
    subs = [v for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr")]
    subs += [b for v in eqn.params.values() if isinstance(v, tuple) for b in v
             if hasattr(b, "jaxpr")]  # cond's branches: the dearest one.
    counts = [_jaxpr_flops(getattr(v, "jaxpr", v)) for v in subs]
    if name == "cond":
      total += max(counts, default=0)
    else:
      total += times * sum(counts)
  return total


def gemm_rate(shapes=((574, 512, 2048), (574, 2048, 512), (2048, 2048, 2048)),
              reps: int = 30, tries: int = 3) -> float:
  """The best f32 matrix-multiply rate this machine's XLA reaches, GFLOP per CPU second
  (all threads counted, as the iteration's CPU time is): the step's MLP shapes (574 rows:
  two examples of 287 tokens) and a large square one, the best of `tries` timings each."""
  best = 0.0
  for m, k, n in shapes:
    a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    for _ in range(tries):
      with Clock() as c:
        for _ in range(reps):
          out = f(a, b)
        out.block_until_ready()
      best = max(best, 2 * m * k * n * reps / max(c.cpu, 1e-9) / 1e9)
  return best


def bench_floor(b: Bench, steps: int, iteration: dict | None = None) -> list[dict]:
  """The iteration's matrix arithmetic (256 train steps at batch 2; the encoder once per
  image; one scoring pass per image before and after training) over the best rate this
  machine multiplies matrices at: no implementation of the same computation in f32 takes
  fewer CPU seconds. Element-wise work, compilation and image decoding are left out.
  `iteration`: the iteration row of the same run, to set the floor beside what it took."""
  lm = b.lm
  train_set, valid_set = splits.split(b.examples, 10, 0)
  # Batches takes one text bucket per dataset (one compile): the first batch has it.
  chunk, batch = next(iter(Batches(train_set, lm.tok, lm.cfg.image_size, BATCH,
                                   DEFAULT_PROMPT, with_suffix=True)))
  step, state, frozen = _our_step(lm)
  features = session.feature_cache(lm, "attn", "first")
  zbatch = features.attach(chunk, batch)
  step_flops = matmul_flops(step, state[0], zbatch, frozen)  # Traced, not run: no donation.
  image = np.zeros((1, lm.cfg.image_size, lm.cfg.image_size, 3), np.float32)
  enc_flops = matmul_flops(lambda p, x: lm.model.apply({"params": {"img": p}}, x,
                                                       method=model_lib.PaliGemma.embed_image),
                           lm.params["img"], image)
  ids = np.asarray(lm.yes_no_ids, np.int32)
  score_flops = 0
  for examples in (train_set, valid_set):  # Each scored before and after training.
    one, first = next(iter(Batches(examples, lm.tok, lm.cfg.image_size, 1, DEFAULT_PROMPT,
                                   with_suffix=False)))
    z = features.attach(one, first)
    per = matmul_flops(functools.partial(model_lib.yes_no_logits, lm.model), lm.params,
                       z.inputs(), z.prefix_len, ids)
    score_flops += 2 * len(examples) * per
  total = steps * step_flops + len(b.examples) * enc_flops + score_flops
  rate = gemm_rate()
  floor = total / (rate * 1e9)
  rec = {"measure": "iteration_floor", "step_gflop": round(step_flops / 1e9, 2),
         "encoder_gflop_per_image": round(enc_flops / 1e9, 2),
         "score_gflop_per_image": round(score_flops / 2 / len(b.examples) / 1e9, 2),
         "iteration_tflop": round(total / 1e12, 2), "iteration_flop": int(total),
         "gemm_gflop_per_cpu_s": round(rate, 1), "floor_cpu_s": round(floor, 3), "unit": "CPU s", "train_steps": steps,
         "note": "matrix FLOPs / the best f32 GEMM rate: no f32 implementation is faster"}
  if iteration:  # How far ours is from the floor, and the most any f32 code could gain.
    ours, plain = iteration["ours_cpu_s"], iteration["plain_cpu_s"]
    rec |= {"ours_cpu_s": ours, "plain_cpu_s": plain,
            "ours_at_floor_share": round(floor / ours, 2),
            "max_speedup_cpu": round(plain / floor, 2), "cpu_s_for_8x": round(plain / 8, 1)}
  print(json.dumps(rec), flush=True)
  return [rec]


def bench_start(b: Bench, steps: int = 4) -> list[dict]:
  """A real `03-do_learn.py -2 --phases` run twice: compilation cold, then from the cache."""
  project = os.path.join(b.workdir, "project")
  shutil.rmtree(os.path.join(project, "cache"), ignore_errors=True)  # Cold means cold.
  root = os.path.dirname(b.examples[0].source)  # The generated data's folder: --root.
  splits_dir = os.path.join(project, "dataset", "s")  # -d s: the project's dataset/s.
  tr, va = splits.split(b.examples, 10, 0)
  data_lib.write_jsonl(os.path.join(splits_dir, "train.jsonl"), tr)
  data_lib.write_jsonl(os.path.join(splits_dir, "valid.jsonl"), va)
  script = os.path.join(os.path.dirname(__file__), "..", "..", "..", "playground",
                        "03-do_learn.py")
  cmd = [sys.executable, os.path.abspath(script), "--project", project, "-d", "s",
         "--model", b.spec.weights, "--root", root,
         "--steps", str(steps), "-2", "--phases", "--compute-dtype", "float32"]
  runs = []
  for _ in range(2):
    with Clock() as clock:
      out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
      raise UserError(f"bench start run failed: {out.stderr.strip()[-300:]}")
    timing = json.loads(out.stdout.strip().splitlines()[-1])
    compiles = [p["seconds"] for p in timing["phases"] if p["name"] == "compilation"]
    runs.append((clock, compiles))
  (cold, c_cold), (warm, c_warm) = runs
  rec = {"measure": "start_cold_warm", "cold_s": round(cold.wall, 2),
         "warm_s": round(warm.wall, 2), "cold_cpu_s": round(cold.cpu, 2),
         "warm_cpu_s": round(warm.cpu, 2),
         "compile_cold_s": [round(c, 2) for c in c_cold],
         "compile_warm_s": [round(c, 2) for c in c_warm], "unit": "s",
         "note": "03-do_learn.py -2 --phases twice; compile_*: train step of stage 1 and 2"}
  print(json.dumps(rec), flush=True)
  return [rec]


def machine() -> dict:
  dev = jax.devices()[0]
  return {"machine": platform.node(), "cpu_count": os.cpu_count(), "backend": dev.platform,
          "device": getattr(dev, "device_kind", str(dev)), "jax": jax.__version__}


ROWS = ("load", "step", "classify", "iteration", "floor", "start")


def main(workdir: str, steps: int, n_images: int = 96,
         model_config: dict = BENCH_CONFIG, rows: tuple[str, ...] = ROWS) -> list[dict]:
  """`rows`: which measurements (all by default; e.g. ("iteration",) alone)."""
  # Honest compile times: the persistent compilation cache stays out of it (the
  # start row runs real scripts, which use it on purpose). The bench model's
  # spec has no cache folder, so image features stay in memory, cold per row.
  jax.config.update("jax_enable_compilation_cache", False)
  print(json.dumps({"measure": "machine", **machine()}), flush=True)
  b = setup(workdir, n_images, model_config)
  out: list[dict] = []
  iteration = lambda: next((r for r in out if r["measure"] == "do_learn_iteration"),  # noqa: E731
                           None)
  run = {"load": lambda: bench_load_compile(b), "step": lambda: bench_train_step(b),
         "classify": lambda: bench_classify(b), "iteration": lambda: bench_iteration(b, steps),
         "floor": lambda: bench_floor(b, steps, iteration()), "start": lambda: bench_start(b)}
  for name in ROWS:
    if name in rows:
      out += run[name]()
  return out


# --- Loss curves of the default recipe: the divergence guard's evidence -------

CURVE_LRS = (0.03, 0.1, 0.3, 1.0)


def record_curves(workdir: str, seeds: int = 10, lrs=CURVE_LRS, steps: int = 256,
                  models=("tiny", "small"), log=print) -> list[dict]:
  """Per-step losses of the users' recipe (attention only, SGD, batch 2) with no guard.

  One curve per (model, lr, seed) on 96 generated images split 86/10, each
  also logged as one JSON line as soon as it is done. Only a non-finite loss
  ends a run early (its curve then ends in nan).
  """
  out = []
  for name in models:
    if name == "small":
      b = setup(os.path.join(workdir, "small"))
      lm, examples = b.lm, b.examples
    else:
      lm = session.load(session.write_random_model(name, os.path.join(workdir, name)),
                        trainable="attn")
      examples = data_lib.read_jsonl(synthetic.make_dataset(os.path.join(workdir, "data"),
                                                            n=96, seed=0))
    train_set, _ = splits.split(examples, 10, 0)
    features = session.feature_cache(lm, "attn", "first")
    for lr in lrs:
      for seed in range(seeds):
        losses_ = _curve(lm, train_set, lr, seed, steps, features)
        out.append({"model": name, "lr": lr, "seed": seed, "loss": losses_})
        log(json.dumps(out[-1]))
  return out


def _curve(lm, examples, lr: float, seed: int, steps: int, features) -> list[float]:
  # diverge_loss 0: only a non-finite loss ends the run; its history then ends in it.
  tcfg = train.TrainConfig(lr=lr, seed=seed, steps=steps, diverge_loss=0.0,
                           print_every=10 ** 6)
  result = train.fit(lm, examples, tcfg, EvalConfig(prompt=DEFAULT_PROMPT),
                     log=lambda _: None, features=features)
  return [round(loss, 4) for _, _, loss, _, _ in result.history]


def _diverged_in_hindsight(loss: np.ndarray, window: int = 32) -> int | None:
  """The users' judgement with the whole curve in view: the step where the loss went above 1
  and stayed there to the end (having been below), or a non-finite loss; else None."""
  if not np.isfinite(loss).all():
    return int(np.argmin(np.isfinite(loss))) + 1
  med = np.array([np.median(loss[max(0, i - window + 1):i + 1]) for i in range(len(loss))])
  below = np.flatnonzero(med <= 1.0)
  if not below.size or below[-1] >= len(loss) - 64:  # Never learned, or recovered late.
    return None
  return int(below[-1]) + 2  # The first step of the final stretch above 1.


def _old_rule_stop(loss: np.ndarray, steps: int = 256) -> int | None:
  """The guard before this change: 16-step mean above 1 after warm-up, having been below."""
  warmup, was_below = round(0.1 * (steps + 1)), False
  for s in range(16, len(loss) + 1):
    if not np.isfinite(loss[s - 1]):
      return s
    mean = loss[s - 16:s].mean()
    was_below |= mean < 1.0
    if s > warmup and was_below and mean > 1.0:
      return s
  return None


def guard_table(curves: list[dict]) -> list[dict]:
  """Per (model, lr): runs, diverged in hindsight, stops by the guard, false stops, misses."""
  rows = {}
  for c in curves:
    loss = np.asarray(c["loss"], np.float64)
    truth = _diverged_in_hindsight(loss)
    guard = train.Guard(1.0)
    stop = next((s for s, v in enumerate(loss, 1) if guard.check(s, float(v))), None)
    old = _old_rule_stop(loss)
    r = rows.setdefault((c["model"], c["lr"]), dict(model=c["model"], lr=c["lr"], runs=0,
                                                   diverged=0, stopped=0, false_stops=0,
                                                   missed=0, old_rule_stops=0,
                                                   old_rule_false_stops=0))
    r["runs"] += 1
    r["diverged"] += truth is not None
    r["stopped"] += stop is not None
    r["false_stops"] += stop is not None and truth is None
    r["missed"] += truth is not None and (stop is None or stop - truth > 64)
    r["old_rule_stops"] += old is not None
    r["old_rule_false_stops"] += old is not None and truth is None
  return list(rows.values())
