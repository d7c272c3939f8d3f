"""Training, top to bottom: recipe, optimizer, the pure train step, the loop around it.

- `TrainConfig`: one recipe; its defaults are big_vision's fine-tuning colab.
- `make_optimizer`: SGD or Adam; the colab's schedule (linear warm-up, cosine) is
  computed on the host once per step and passed to the step as data.
- `train_step`: pure, jitted once by `jit_train_step` with the state donated
  and explicit shardings. Parameters are split by a path regex (`params.split`)
  into a trainable tree (f32, updated by optax) and a frozen tree (half
  precision, passed in as an argument, never closed over). Loss and logits f32.
- `fit`: one training stage: batches from the data pipeline, image tokens from
  the frozen-encoder feature cache, progress lines, the divergence guard with
  restarts on the next seed, and the periodic train state that `--resume`
  continues from (the data order is a function of the seed, so a resumed run
  reaches the same result as an uninterrupted one, with any number of processes:
  the state is saved whole, and each process loads its rows of every global
  batch, see `distributed`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from palijudge import checkpoint
from palijudge import files
from palijudge import loader as loader_lib
from palijudge import distributed
from palijudge import losses
from palijudge import params as params_lib
from palijudge import progress
from palijudge import quantize
from palijudge.data.batch import Batch, Batches, Flips, PixelCache, training_stream
from palijudge.data.examples import Example
from palijudge.model.features import FeatureCache
from palijudge.errors import UserError, where
from palijudge.loader import LoadedModel, feature_cache
from palijudge.model import lora
from palijudge.model import paligemma as model_lib
from palijudge.configs import EvalConfig, TrainConfig  # noqa: F401  (TrainConfig: re-exported)

Params = dict[str, Any]



def colab_lr(base: float, train_steps: int, warmup_percent: float = 0.10) -> Callable:
  """lr(s) for s = 1..train_steps (float32, on the host): linear warm-up, then cosine decay to 0.

  As big_vision's `create_learning_rate_schedule(total_steps=train_steps + 1,
  decay_type="cosine", warmup_percent=...)`: warm-up steps are rounded
  (65 total -> 6; 257 total -> 26, which reproduces the users' logged rates).
  Plain numpy: the loop computes each step's value once and passes it to the
  device as data (`TrainState.lr`), so no schedule is compiled into the step.
  """
  total = train_steps + 1
  warmup = round(warmup_percent * total)
  f32 = np.float32

  def lr(s):
    s = np.asarray(s, f32)
    progress = np.clip((s - f32(warmup)) / f32(max(total - warmup, 1)), f32(0), f32(1))
    value = f32(base) * f32(0.5) * (f32(1) + np.cos(f32(np.pi) * progress))
    return value * np.minimum(f32(1), s / f32(warmup)) if warmup else value
  return lr


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """SGD or Adam at learning rate 1: the update's direction, which `train_step` scales by
  the step's learning rate (`TrainState.lr`, data set by the loop from `colab_lr`).

  Neither the schedule's shape (warm-up, cosine over `steps`) nor the peak lr is
  compiled in, so another --steps, --lr, --warmup or a second stage at lr/10
  reuses the compiled step and the persistent compilation cache. Update =
  -lr(step) * direction, as the colab's (SGD(lr) = -lr * g; Adam(lr) = -lr * Adam's
  direction).
  """
  return optax.adam(1.0) if cfg.optimizer == "adam" else optax.sgd(1.0)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Params  # The trainable leaves only, f32.
  opt_state: Any
  lr: Any = 1.0   # This step's learning rate: data, set by the loop before each step.


def init_state(trainable: Params, tx: optax.GradientTransformation, lr: float = 1.0
               ) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state=tx.init(trainable), lr=jnp.asarray(lr, jnp.float32))


def _grads(trainable: Params, frozen: Params, batch: Batch, model, loss, yes_no_ids):
  def loss_fn(t):
    return losses.batch_loss(model, params_lib.merge(t, frozen), batch, loss, yes_no_ids)
  return jax.value_and_grad(loss_fn)(trainable)


def micro_batches(batch, accum: int):
  """(accum, rows / accum, ...) per leaf: micro-batch i holds rows i, i + accum, i + 2 accum, ...

  Strided, not contiguous: the batch is split over the devices in contiguous
  blocks, and a block of b x accum rows holds b rows of every micro-batch, so
  each device keeps its own rows (no gather) and does 1/accum of its share
  per micro-step.
  """
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)


def _accumulated_grads(trainable, frozen, batch, accum: int, **kw):
  """Mean loss and gradient over `accum` equal micro-batches, one at a time.

  The loss is a mean over examples, so the mean of the micro-batch means is
  the large batch's value; only one micro-batch's activations are alive.
  """
  micro = micro_batches(batch, accum)

  def body(carry, mb):
    value, grads = _grads(trainable, frozen, mb, **kw)
    return jax.tree.map(jnp.add, carry, (value, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
  (value, grads), _ = jax.lax.scan(body, zeros, micro)
  return jax.tree.map(lambda x: x / accum, (value, grads))


def train_step(state: TrainState, batch: Batch, frozen: Params, *, model, tx,
               loss: losses.LossConfig, yes_no_ids, accum: int = 1
               ) -> tuple[TrainState, dict]:
  """One optimizer step on one (possibly accumulated) batch. Pure; see `jit_train_step`."""
  kw = dict(model=model, loss=loss, yes_no_ids=yes_no_ids)
  if accum > 1:
    value, grads = _accumulated_grads(state.params, frozen, batch, accum, **kw)
  else:
    value, grads = _grads(state.params, frozen, batch, **kw)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: state.lr * u, updates)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": value, "grad_norm": optax.tree.norm(grads)}
  return TrainState(state.step + 1, params, opt_state, state.lr), metrics


def jit_train_step(model, tx, loss: losses.LossConfig, yes_no_ids, mesh: jax.sharding.Mesh,
                   state_shardings, frozen_shardings, accum: int = 1):
  """`train_step` jitted once: state donated, batch split over the mesh's data axis.

  Shardings come from `params_lib.state_shardings` / `param_shardings`
  (replicated for data parallelism, split leaves for FSDP).
  """
  from jax.sharding import NamedSharding, PartitionSpec as P
  data = NamedSharding(mesh, params_lib.BATCH)
  fn = functools.partial(train_step, model=model, tx=tx, loss=loss,
                         yes_no_ids=tuple(yes_no_ids), accum=accum)
  return jax.jit(fn, donate_argnums=(0,), in_shardings=(state_shardings, data, frozen_shardings),
                 out_shardings=(state_shardings, NamedSharding(mesh, P())))


def progress_line(step: int, total: int, lr: float, loss: float) -> str:
  """The colab's progress line: `step: 32/256   lr: 0.02995   loss: 0.3417`."""
  return f"step: {step:2d}/{total:2d}   lr: {lr:.5f}   loss: {loss:.4f}"


# --- The loop: guard, train state, restarts ---------------------------------

GUARD_WINDOW = 32    # Steps in the guard's median.
GUARD_PATIENCE = 32  # Steps it must stay above the threshold.
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class FitResult:
  params: dict
  history: list[tuple[int, float, float, float, float]]  # step, lr, loss, grad_norm, seconds
  seed: int        # The seed of the attempt that finished.
  restarts: int
  seconds: float
  compile_seconds: float = 0.0  # Of the train step, inside `seconds`.
  diverged: str = ""            # Why the last attempt stopped early ("" if it did not).
  kept_step: int = 0            # With `diverged` or an evaluation: the step `params` holds.


class Diverged(Exception):
  """Raised by the loop; carries the best state seen so far (host arrays) and the history."""

  def __init__(self, step: int, why: str, history: list, best_params, best_step: int):
    super().__init__(why)
    self.step, self.why, self.history = step, why, history
    self.best_params, self.best_step = best_params, best_step


class Guard:
  """The users' rule made exact: the loss went above ~1 and stayed there.

  Judged on the median loss of the last `window` steps, which one noisy batch
  of 2 barely moves: a run has diverged when that median has stayed above
  `threshold` for `patience` consecutive steps, after having been below it
  (a run that has not learned yet is not a diverged one), or at once when a
  loss is not finite. threshold 0 checks finiteness only. The defaults come
  from recorded runs (BENCHMARKS.md, "Divergence guard").
  """

  def __init__(self, threshold: float, window: int = GUARD_WINDOW,
               patience: int = GUARD_PATIENCE):
    self.threshold, self.patience = threshold, patience
    self.window = collections.deque(maxlen=window)
    self.was_below = False
    self.above = 0          # Consecutive steps with the median above the threshold.
    self.median = math.nan  # Of the last full window.

  def check(self, step: int, loss: float) -> str | None:
    """None while the run is healthy, else why it diverged (one line)."""
    if not math.isfinite(loss):
      return f"loss {loss} at step {step}"
    self.window.append(loss)
    if self.threshold <= 0 or len(self.window) < self.window.maxlen:
      return None
    self.median = float(np.median(self.window))
    if self.median <= self.threshold:
      self.was_below, self.above = True, 0
      return None
    self.above += 1 if self.was_below else 0
    if self.above >= self.patience:
      return (f"the median loss of the last {self.window.maxlen} steps stayed above "
              f"{self.threshold:g} for {self.above} steps ({self.median:.4g} at step {step})")
    return None


def save_state(path: str, state: TrainState, info: dict) -> None:
  """Whole arrays, whatever the mesh, so any number of processes can resume from it.

  Every process takes part (a leaf split over processes is gathered); process 0 writes.
  """
  leaves = jax.tree.leaves(state)
  arrays = ((f"state/{i:05d}", np.asarray(distributed.host(x))) for i, x in enumerate(leaves))
  if distributed.is_main():
    checkpoint.write_npz(path, arrays, dict(info, n_leaves=len(leaves)))
  else:
    for _ in arrays:  # The gathers only.
      pass


def load_state(path: str, like: TrainState) -> tuple[TrainState, dict]:
  info = checkpoint.read_meta(path)
  leaves, treedef = jax.tree.flatten(like)
  if info.get("n_leaves") != len(leaves):
    raise UserError(f"{where(path)}: train state does not match this run's configuration")
  new = []
  keys = [f"state/{i:05d}" for i in range(len(leaves))]
  for i, (ref, a) in enumerate(zip(leaves, checkpoint.read_arrays(path, keys))):
    shape, dtype = np.shape(ref), getattr(ref, "dtype", np.float32)  # lr may be a float.
    if a.shape != shape:
      raise UserError(f"{where(path)}: train state leaf {i} has shape {a.shape}, "
                      f"expected {shape}")
    new.append(a.astype(dtype))
  return jax.tree.unflatten(treedef, new), info


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage's place in a run (learn's wiring): where its train state is saved and
  resumed from, its index, who watches its steps. The recipe is the TrainConfig; the
  prompt and the frame of an animated image, the EvalConfig's."""
  state_path: str | None = None  # Where periodic train state goes.
  resume: bool = False
  index: int = 0                 # Stored with the state: another stage's state is not resumed.
  use_feature_cache: bool = True
  # Called with each history row (step, lr, loss, grad_norm, seconds) as it happens:
  # run records stream train_log.csv, so a killed run keeps its log.
  on_step: Callable[..., None] | None = None
  evaluation: "Evaluation | None" = None  # --eval-every: score, keep the best, stop early.


def fit(lm: LoadedModel, examples: Sequence[Example], tcfg: TrainConfig, ecfg: EvalConfig,
        stage: Stage = Stage(), log: Log = print, cache: PixelCache | None = None,
        features: FeatureCache | None = None) -> FitResult:
  """Runs the stage, restarting with the next seed on divergence. Examples whose prefix is
  empty are prompted with `ecfg.prompt`; animated images give `ecfg.gif_frame`.

  `features`: a frozen-encoder cache shared with evaluation (made here if None).
  """
  quantize.check_trainable(lm.params, tcfg.trainable, lm.quantize)
  n_yes = sum(e.label for e in examples)
  tcfg = dataclasses.replace(tcfg, loss=tcfg.loss.resolved(n_yes, len(examples) - n_yes))
  seed, start = tcfg.seed, time.time()
  for attempt in range(tcfg.max_restarts + 1):
    try:
      params, history, compile_s, kept = _attempt(
          lm, examples, dataclasses.replace(tcfg, seed=seed), ecfg, stage, log, cache, features)
      return FitResult(params, history, seed, attempt, time.time() - start, compile_s,
                       kept_step=kept)
    except Diverged as d:
      if attempt == tcfg.max_restarts:
        return _kept(lm, d, tcfg, seed, attempt, time.time() - start, log)
      log(f"diverged: {d}; restart {attempt + 1}/{tcfg.max_restarts} with seed {seed + 1}")
      seed += 1
  raise AssertionError("unreachable")


def _kept(lm: LoadedModel, d: Diverged, tcfg: TrainConfig, seed: int, restarts: int,
          seconds: float, log: Log) -> FitResult:
  """What a diverged last attempt leaves: its best state so far, or the model it started from."""
  if d.best_params is None:
    params, what = lm.params, "the model as it was before training"
  else:
    params = params_lib.merge(lm.params, d.best_params)
    what = f"the state of step {d.best_step}, where the median loss was lowest"
  log(f"warning: training diverged: {d.why} after {restarts} restart(s); keeping {what} "
      f"(a lower --lr or --max-restarts N may help)")
  return FitResult(params, d.history, seed, restarts, seconds, diverged=d.why,
                   kept_step=d.best_step)


def training_mesh(lm: LoadedModel, tcfg: TrainConfig) -> jax.sharding.Mesh:
  """The mesh the model was loaded into when it spans every device (every process's), else
  one made by the same policy (--fsdp: FSDP inside each host; else replicated when it fits)."""
  mesh = lm.mesh
  if mesh is not None and mesh.devices.size == jax.device_count() and (
      not tcfg.fsdp or mesh.shape["fsdp"] > 1 or jax.device_count() == 1):
    return mesh
  return loader_lib.placement(lm.cfg, "fsdp" if tcfg.fsdp else "auto", tcfg.trainable,
                          devices=jax.devices())


@dataclasses.dataclass
class _Prepared:
  """What one attempt's loop runs: the compiled step's inputs, laid out on the devices."""
  step_fn: Callable
  state: TrainState
  frozen: Params
  batches: Batches
  features: FeatureCache | None
  data: jax.sharding.NamedSharding  # A global batch's layout.
  first: int                        # The first step (after a resumed one).
  recipe: dict                      # Saved with the train state.


def _attempt(lm, examples, tcfg: TrainConfig, ecfg: EvalConfig, stage: Stage, log, cache,
             features):
  model = model_lib.build(lm.cfg, lm.model.dtype, tcfg.remat, tcfg.lora_alpha)
  mesh = training_mesh(lm, tcfg)
  big_batch = tcfg.batch_size * tcfg.accum
  params_lib.check_batch(tcfg.batch_size, mesh)
  data = jax.sharding.NamedSharding(mesh, params_lib.BATCH)
  params = lm.params
  if tcfg.trainable == "lora" and lora.rank_of(params) is None:
    params = lora.add_adapters(params, tcfg.lora_rank, tcfg.seed)
  trainable, frozen = params_lib.split(params, tcfg.trainable)
  trainable = jax.tree.map(lambda a: np.asarray(a, np.float32), trainable)
  tx = make_optimizer(tcfg)
  state = init_state(trainable, tx)
  state_sh = params_lib.tree_shardings(mesh, state)
  frozen_sh = params_lib.tree_shardings(mesh, frozen)
  first, rec = 1, recipe(tcfg, examples, ecfg, lm.weights_id)
  if stage.resume and stage.state_path and os.path.exists(stage.state_path):
    state, first = _resume(stage, tcfg, state, rec, log)
  state = params_lib.place(state, state_sh)
  frozen = params_lib.place(frozen, frozen_sh)
  step_fn = jit_train_step(model, tx, tcfg.loss, lm.yes_no_ids, mesh, state_sh,
                                     frozen_sh, tcfg.accum)
  stream = training_stream(examples, tcfg.steps, big_batch, tcfg.seed)  # Lazy: any --steps.
  skip = (first - 1) * big_batch
  batches = Batches(stream[skip:], lm.tok, lm.cfg.image_size, big_batch, ecfg.prompt,
                    with_suffix=True, gif_frame=ecfg.gif_frame, cache=cache,
                    flips=Flips(tcfg.seed, len(stream), skip) if tcfg.flip else None,
                    rows=distributed.batch_rows(data, big_batch))  # This process's share.
  if not stage.use_feature_cache:
    features = None
  elif features is None:
    features = feature_cache(lm, tcfg.trainable, ecfg.gif_frame)
  return _loop(_Prepared(step_fn, state, frozen, batches, features, data, first, rec), tcfg,
               stage, log)


# What a resumed run must share with the run that saved the state: every field of
# the recipe but these (they change what is printed, saved or how memory is laid out,
# not the numbers; the seed is checked on its own).
_NOT_RECIPE = ("print_every", "save_every", "max_restarts", "seed", "fsdp", "remat")


def recipe(tcfg: TrainConfig, examples: Sequence[Example], ecfg: EvalConfig, weights: str
           ) -> dict:
  """The resolved recipe saved with the train state: flags, prompt, data and weights."""
  data = files.sha256_text(json.dumps([(e.image, e.label, e.prefix) for e in examples]))
  out = {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in _NOT_RECIPE}
  out |= {"prompt": ecfg.prompt, "gif_frame": ecfg.gif_frame, "data": data,
          "examples": len(examples), "weights": weights}
  return json.loads(json.dumps(out))  # As it reads back from the file.


def recipe_changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
  """'name: saved -> now' for every field that differs (nested loss fields as loss.name)."""
  out = []
  for key in sorted(set(saved) | set(now)):
    a, b = saved.get(key), now.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += recipe_changes(a, b, f"{prefix}{key}.")
    elif a != b:
      short = lambda v: f"{v[:12]}..." if isinstance(v, str) and len(v) > 16 else v
      out.append(f"{prefix}{key}: {short(a)} -> {short(b)}")
  return out


def _resume(stage: Stage, tcfg: TrainConfig, state, rec: dict, log: Log):
  """(state, first step) from the saved train state, refusing one saved under another recipe."""
  info = checkpoint.read_meta(stage.state_path)
  if (info.get("stage"), info.get("seed")) != (stage.index, tcfg.seed):
    return state, 1  # Another stage's or attempt's state: this one starts fresh.
  saved = info.get("recipe")
  changes = recipe_changes(saved, rec) if isinstance(saved, dict) else []
  if changes:
    raise UserError(f"{where(stage.state_path)}: --resume: this train state was saved by another "
                    f"recipe ({'; '.join(changes)}); give the same flags and data, or drop "
                    f"--resume to start over")
  state, info = load_state(stage.state_path, state)
  log(f"resumed from {stage.state_path} at step {int(info['step'])}")
  return state, int(info["step"]) + 1


def _loop(p: _Prepared, tcfg: TrainConfig, stage: Stage, log: Log):
  """The steps. Each step's metrics are read one step late, after the next step is
  dispatched, so the host never waits for the device between steps; a step whose
  state is needed (a guard snapshot, a save, an evaluation, the last) is read at once."""
  sched = colab_lr(tcfg.lr, tcfg.steps, tcfg.warmup_percent)
  w = _Watch(tcfg, stage, log, p.recipe)
  state, frozen, compiled, pending = p.state, p.frozen, None, None
  for step, (chunk, batch) in enumerate(p.batches, start=p.first):
    if p.features is not None:
      batch = p.features.attach(chunk, batch)
    batch = distributed.global_batch(batch, p.data, tcfg.batch_size * tcfg.accum)
    lr = sched(step)  # Once per step, on the host; data to the device (no recompilation).
    state = state.replace(lr=jax.device_put(lr, state.lr.sharding))
    if compiled is None:  # Ahead of time, so the wait is announced and measured.
      progress.write(log, "compiling the train step ...")
      c0 = time.time()
      compiled = _compiled(p.step_fn, state, batch, frozen)
      w.compile_s = time.time() - c0
    state, metrics = compiled(state, batch, frozen)
    if pending is not None:
      w.read(*pending)
    pending = (step, float(lr), metrics)
    if w.needs_state(step):
      w.read(*pending)
      pending = None
      if w.at_state(step, state, frozen):
        break  # Early stopping.
  if pending is not None:
    w.read(*pending)
  w.close()
  trained, kept = state.params, 0
  if w.evaluated is not None:  # --eval-every: the best evaluated state, back on the devices.
    kept = w.evaluated.step
    trained = jax.device_put(w.evaluated.params, jax.tree.map(lambda a: a.sharding, trained))
    progress.write(log, f"keeping the state of step {kept}, where valid "
                   f"{stage.evaluation.metric} was best ({w.evaluated.score:.4f})")
  # Evaluation runs on each process's own devices: `local` gives each leaf's view there
  # (the same arrays with one process). The trained leaves stay on the devices.
  params = params_lib.merge(distributed.local(trained), distributed.local(frozen))
  return params, w.history, w.compile_s, kept


# The train steps compiled in this process, by their program and devices: a later stage,
# fold, trial or run with the same program (any --steps, --lr, --warmup, seed: they are
# data) reuses the executable without compiling or reading the persistent cache.
_EXECUTABLES: collections.OrderedDict = collections.OrderedDict()
_KEEP_EXECUTABLES = 4


def _compiled(step_fn, state, batch, frozen) -> Callable:
  """The step compiled ahead of time (or this process's earlier compilation of the same
  program), called as such: the jitted function would compile it a second time (its cache
  is not the AOT one). Except with 4-bit frozen arrays on the CPU (--quantize int4/nf4),
  laid out unpacked by JAX 0.10's CPU client, which the executable refuses: there the
  jitted function runs (compiling at its first call)."""
  lowered = step_fn.lower(state, batch, frozen)
  devices = sorted(d.id for d in state.step.sharding.device_set)
  key = files.sha256_text(f"{devices}|{lowered.as_text()}")
  compiled = _EXECUTABLES.pop(key, None) or lowered.compile()
  _EXECUTABLES[key] = compiled  # Most recent last; the oldest go first.
  while len(_EXECUTABLES) > _KEEP_EXECUTABLES:
    _EXECUTABLES.popitem(last=False)
  four_bit = any(jnp.issubdtype(x.dtype, jnp.integer) and jnp.iinfo(x.dtype).bits == 4
                 for x in jax.tree.leaves(frozen))
  return step_fn if four_bit and jax.default_backend() == "cpu" else compiled


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """--eval-every: a validation score every `every` steps (higher is better); the state with
  the best score is what the stage returns, and with `patience` > 0 training stops after that
  many evaluations without a better score."""
  every: int
  score: Callable[[int, Params], float]  # (step, every parameter) -> score.
  metric: str = "score"
  patience: int = 0


@dataclasses.dataclass
class _Best:
  score: float
  step: int
  params: Any  # A host copy of the trainable leaves of that step.


class _Watch:
  """What the loop does with each step's metrics: history, guard, progress lines, saves,
  and the evaluations of --eval-every."""

  def __init__(self, tcfg: TrainConfig, stage: Stage, log: Log, rec: dict):
    self.tcfg, self.stage, self.log, self.rec = tcfg, stage, log, rec
    self.history, self.guard, self.t0 = [], Guard(tcfg.diverge_loss), time.time()
    self.best = (math.inf, 0, None)  # (median loss, step, host copy of the trainable params)
    self.evaluated: _Best | None = None  # The best evaluated state (--eval-every).
    self.stale = 0  # Evaluations since the best one.
    self.compile_s, self.bar = 0.0, None  # Bar made after the first step (rate w/o compile).

  def read(self, step: int, lr: float, metrics: dict) -> None:
    """One step's row: waits for its metrics; raises Diverged when the guard says so."""
    loss = float(metrics["loss"])
    self.history.append((step, lr, loss, float(metrics["grad_norm"]), time.time() - self.t0))
    if self.stage.on_step is not None:
      self.stage.on_step(*self.history[-1])
    if self.bar is None:
      self.bar = progress.bar(self.tcfg.steps, f"train (stage {self.stage.index + 1})", "step",
                              initial=step)
    else:
      _advance(self.bar, self.history, self.tcfg.batch_size * self.tcfg.accum)
    why = self.guard.check(step, loss)
    if why:
      self.close()
      raise Diverged(step, why, self.history, self.best[2], self.best[1])
    if step == 1 or step % self.tcfg.print_every == 0 or step == self.tcfg.steps:
      progress.write(self.log, progress_line(step, self.tcfg.steps, lr, loss))

  def needs_state(self, step: int) -> bool:
    """Whether `at_state` must see the state of this step (so its metrics are read now)."""
    ev, t = self.stage.evaluation, self.tcfg
    return (step % GUARD_WINDOW == 0 or step == t.steps
            or bool(t.save_every and self.stage.state_path and step % t.save_every == 0)
            or bool(ev and step % ev.every == 0))

  def at_state(self, step: int, state: TrainState, frozen: Params) -> bool:
    """Snapshot, save and evaluate the state after `step`; True to stop early."""
    t, stage = self.tcfg, self.stage
    if step % GUARD_WINDOW == 0 and self.guard.median < self.best[0]:
      self.best = (self.guard.median, step, distributed.host(state.params))
    if t.save_every and stage.state_path and step % t.save_every == 0 and step < t.steps:
      save_state(stage.state_path, state, {"stage": stage.index, "seed": t.seed, "step": step,
                                           "recipe": self.rec})
    ev = stage.evaluation
    if ev is None or (step % ev.every and step != t.steps):
      return False
    return self._evaluate(ev, step, state, frozen)

  def _evaluate(self, ev: Evaluation, step: int, state: TrainState, frozen: Params) -> bool:
    params = params_lib.merge(distributed.local(state.params), distributed.local(frozen))
    score = float(ev.score(step, params))
    better = self.evaluated is None or score > self.evaluated.score
    if better:  # A host copy: the state's arrays are donated to the next step, and device
      self.evaluated = _Best(score, step, distributed.host(state.params))  # memory is scarce.
    self.stale = 0 if better else self.stale + 1
    best = self.evaluated
    progress.write(self.log, f"eval at step {step}: valid {ev.metric} {score:.4f} "
                   f"(best {best.score:.4f} at step {best.step})")
    if ev.patience and self.stale >= ev.patience and step < self.tcfg.steps:
      progress.write(self.log, f"early stop at step {step}: valid {ev.metric} did not improve "
                     f"for {ev.patience} evaluations")
      return True
    return False

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _advance(bar, history: list, examples_per_step: int) -> None:
  """One step on the bar, with the loss and the examples/s of the steps after compilation."""
  (s0, *_, t0), (s1, *_, t1) = history[0], history[-1]
  rate = (s1 - s0) * examples_per_step / max(t1 - t0, 1e-9)
  bar.set_postfix_str(f"loss {history[-1][2]:.4f}, {rate:.1f} ex/s", refresh=False)
  bar.update(1)
