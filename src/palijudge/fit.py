"""One training stage: the loop around `train.train_step`.

- Divergence guard: a non-finite loss, or a loss that climbs above
  `diverge_loss` after warm-up where it had been below (the users' rule,
  judged on the mean of the last `GUARD_WINDOW` steps so one noisy batch of
  2 does not count), stops the attempt; it restarts with the next seed, up
  to `max_restarts` times.
- Periodic train state (`save_every`): trainable params, optimizer state,
  step and seed in one atomic .npz. The data order is a function of the seed,
  so `resume` continues a killed run to the same result as an uninterrupted
  one.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np

from palijudge import checkpoint
from palijudge import lora
from palijudge import model as model_lib
from palijudge import sharding
from palijudge import train as train_lib
from palijudge.data import Example
from palijudge.errors import UserError, where
from palijudge.features import FeatureCache
from palijudge.pipeline import Batches, PixelCache, training_stream
from palijudge.session import LoadedModel

GUARD_WINDOW = 16
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class FitResult:
  params: dict
  history: list[tuple[int, float, float, float, float]]  # step, lr, loss, grad_norm, seconds
  seed: int        # The seed of the attempt that finished.
  restarts: int
  seconds: float


class Diverged(Exception):
  def __init__(self, step: int, loss: float):
    super().__init__(f"loss {loss:.4g} at step {step}")
    self.step, self.loss = step, loss


class Guard:
  """Flags a non-finite loss, or a windowed mean loss that rose above `threshold`
  after warm-up, having been below it (threshold 0 checks finiteness only)."""

  def __init__(self, threshold: float, warmup: int, window: int = GUARD_WINDOW):
    self.threshold, self.warmup = threshold, warmup
    self.window = collections.deque(maxlen=window)
    self.was_below = False

  def diverged(self, step: int, loss: float) -> bool:
    if not np.isfinite(loss):
      return True
    self.window.append(loss)
    if self.threshold <= 0 or len(self.window) < self.window.maxlen:
      return False
    mean = sum(self.window) / len(self.window)
    if mean < self.threshold:
      self.was_below = True
    return step > self.warmup and self.was_below and mean > self.threshold


def save_state(path: str, state: train_lib.TrainState, info: dict) -> None:
  leaves = jax.tree.leaves(state)
  arrays = ((f"state/{i:05d}", np.asarray(jax.device_get(x))) for i, x in enumerate(leaves))
  checkpoint.write_npz(path, arrays, dict(info, n_leaves=len(leaves)))


def load_state(path: str, like: train_lib.TrainState) -> tuple[train_lib.TrainState, dict]:
  info = checkpoint.read_meta(path)
  leaves, treedef = jax.tree.flatten(like)
  if info.get("n_leaves") != len(leaves):
    raise UserError(f"{where(path)}: train state does not match this run's configuration")
  with np.load(path, allow_pickle=False) as npz:
    new = []
    for i, ref in enumerate(leaves):
      a = npz[f"state/{i:05d}"]
      if a.shape != ref.shape:
        raise UserError(f"{where(path)}: train state leaf {i} has shape {a.shape}, "
                        f"expected {ref.shape}")
      new.append(a.astype(ref.dtype))
  return jax.tree.unflatten(treedef, new), info


@dataclasses.dataclass(frozen=True)
class FitOptions:
  prompt: str
  gif_frame: str = "first"
  state_path: str | None = None  # Where periodic train state goes.
  resume: bool = False
  stage: int = 0                 # Stage index, stored with the state.
  use_feature_cache: bool = True


def fit(lm: LoadedModel, examples: Sequence[Example], tcfg: train_lib.TrainConfig,
        opts: FitOptions, log: Log = print, cache: PixelCache | None = None,
        features: FeatureCache | None = None) -> FitResult:
  """Runs the stage, restarting with the next seed on divergence.

  `features`: a frozen-encoder cache shared with evaluation (made here if None).
  """
  seed, start = tcfg.seed, time.time()
  for attempt in range(tcfg.max_restarts + 1):
    try:
      params, history = _attempt(lm, examples, dataclasses.replace(tcfg, seed=seed), opts,
                                 log, cache, features)
      return FitResult(params, history, seed, attempt, time.time() - start)
    except Diverged as d:
      if attempt == tcfg.max_restarts:
        raise UserError(f"training diverged ({d}) after {attempt} restart(s); try a lower "
                        f"--lr or more --max-restarts") from None
      log(f"diverged: {d}; restart {attempt + 1}/{tcfg.max_restarts} with seed {seed + 1}")
      seed += 1
  raise AssertionError("unreachable")


def feature_cache(lm: LoadedModel, trainable: str, gif_frame: str) -> FeatureCache | None:
  """A cache of image tokens, or None when training changes the encoder."""
  if train_lib.trains_encoder(trainable):
    return None
  return FeatureCache(lm.model, lm.params["img"], lm.spec.weights_id, gif_frame)


def _attempt(lm, examples, tcfg, opts: FitOptions, log, cache, features):
  model = model_lib.build(lm.cfg, lm.model.dtype, tcfg.remat)
  mesh = sharding.make_mesh()
  big_batch = tcfg.batch_size * tcfg.accum
  sharding.check_batch(tcfg.batch_size, mesh)
  params = lm.params
  if tcfg.trainable == "lora" and lora.rank_of(params) is None:
    params = lora.add_adapters(params, tcfg.lora_rank, tcfg.seed)
  trainable, frozen = train_lib.split_params(params, tcfg.trainable)
  trainable = jax.tree.map(lambda a: np.asarray(a, np.float32), trainable)
  tx = train_lib.make_optimizer(tcfg)
  state = train_lib.init_state(trainable, tx)
  state_sh = sharding.tree_shardings(mesh, state, tcfg.fsdp)
  frozen_sh = sharding.tree_shardings(mesh, frozen, tcfg.fsdp)
  first = 1
  if opts.resume and opts.state_path and os.path.exists(opts.state_path):
    saved, info = load_state(opts.state_path, state)
    if (info.get("stage"), info.get("seed")) == (opts.stage, tcfg.seed):
      state, first = saved, int(info["step"]) + 1
      log(f"resumed from {opts.state_path} at step {first - 1}")
  state = sharding.place(state, state_sh)
  frozen = sharding.place(frozen, frozen_sh)
  step_fn = train_lib.jit_train_step(model, tx, tcfg.loss, lm.yes_no_ids, mesh, state_sh,
                                     frozen_sh, tcfg.accum)
  stream = training_stream(examples, tcfg.steps, big_batch, tcfg.seed)
  flips = (np.random.default_rng(tcfg.seed).random(len(stream)) < 0.5) if tcfg.flip else None
  skip = (first - 1) * big_batch
  batches = Batches(stream[skip:], lm.tok, lm.cfg.image_size, big_batch, opts.prompt,
                    with_suffix=True, gif_frame=opts.gif_frame, cache=cache,
                    flips=None if flips is None else flips[skip:])
  if not opts.use_feature_cache:
    features = None
  elif features is None:
    features = feature_cache(lm, tcfg.trainable, opts.gif_frame)
  return _loop(step_fn, state, frozen, batches, features, tcfg, opts, first, log)


def _loop(step_fn, state, frozen, batches, features, tcfg, opts, first, log):
  sched = train_lib.colab_lr(tcfg.lr, tcfg.steps, tcfg.warmup_percent)
  warmup = round(tcfg.warmup_percent * (tcfg.steps + 1))
  history, guard, t0 = [], Guard(tcfg.diverge_loss, warmup), time.time()
  for step, (chunk, batch) in enumerate(batches, start=first):
    if features is not None:
      batch = features.attach(chunk, batch)
    state, metrics = step_fn(state, batch, frozen)
    loss, lr = float(metrics["loss"]), float(sched(step))
    history.append((step, lr, loss, float(metrics["grad_norm"]), time.time() - t0))
    if guard.diverged(step, loss):
      raise Diverged(step, loss)
    if step == 1 or step % tcfg.print_every == 0 or step == tcfg.steps:
      log(train_lib.progress_line(step, tcfg.steps, lr, loss))
    if tcfg.save_every and opts.state_path and step % tcfg.save_every == 0 and step < tcfg.steps:
      save_state(opts.state_path, state, {"stage": opts.stage, "seed": tcfg.seed, "step": step})
  params = train_lib.merge_params(jax.device_get(state.params), frozen)
  return params, history
