"""Training: the colab's recipe as a pure, jitted, donating `train_step`.

Parameters are split by a path regex into a trainable tree (f32, updated by
optax) and a frozen tree (half precision, passed in as an argument, never
closed over). The batch layout is the one `pipeline.collate` produces.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from palijudge import checkpoint
from palijudge import losses
from palijudge import model as model_lib
from palijudge.errors import UserError

Params = dict[str, Any]

# big_vision-style param-path regexes: what each trainable set updates.
TRAINABLE = {
    "attn": r"^llm/layers/attn/",
    "llm": r"^llm/",
    "all": r".*",
}
OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training recipe. Defaults = big_vision's fine-tuning colab."""
  lr: float = 0.03
  batch_size: int = 2
  steps: int = 256
  seed: int = 0
  trainable: str = "attn"
  optimizer: str = "sgd"
  warmup_percent: float = 0.10
  loss: str = "ce"
  print_every: int = 32
  flip: bool = False  # Augment: random left-right mirror of training images.

  def __post_init__(self):
    def need(ok, msg):
      if not ok:
        raise UserError(f"training config: {msg}")
    need(self.lr > 0 and math.isfinite(self.lr), f"--lr must be > 0, got {self.lr}")
    need(self.batch_size >= 1, f"--batch must be >= 1, got {self.batch_size}")
    need(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
    need(self.trainable in TRAINABLE, f"--trainable must be one of {', '.join(TRAINABLE)}")
    need(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
    need(0 <= self.warmup_percent < 1, "warm-up fraction must be in [0, 1)")
    need(self.loss in losses.LOSSES, f"--loss must be one of {', '.join(losses.LOSSES)}")
    need(self.print_every >= 1, "print_every must be >= 1")


def colab_lr(base: float, train_steps: int, warmup_percent: float = 0.10) -> Callable:
  """lr(s) for s = 1..train_steps: linear warm-up, then cosine decay to 0.

  As big_vision's `create_learning_rate_schedule(total_steps=train_steps + 1,
  decay_type="cosine", warmup_percent=...)`: warm-up steps are rounded
  (65 total -> 6; 257 total -> 26, which reproduces the users' logged rates).
  """
  total = train_steps + 1
  warmup = round(warmup_percent * total)

  def lr(s):
    s = jnp.asarray(s, jnp.float32)
    progress = jnp.clip((s - warmup) / max(total - warmup, 1), 0.0, 1.0)
    value = base * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return value * jnp.minimum(1.0, s / warmup) if warmup else value
  return lr


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  sched = colab_lr(cfg.lr, cfg.steps, cfg.warmup_percent)
  # optax counts updates from 0; the colab's first step is s = 1.
  lr = lambda count: sched(count + 1)
  if cfg.optimizer == "adam":
    return optax.adam(lr)
  return optax.sgd(lr)


def split_params(params: Params, trainable: str) -> tuple[Params, Params]:
  """(trainable, frozen) nested trees with disjoint leaves."""
  pattern = re.compile(TRAINABLE.get(trainable, trainable))
  flat = checkpoint.flatten(params)
  train = {k: v for k, v in flat.items() if pattern.search(k)}
  if not train:
    raise UserError(f"trainable set {trainable!r} matches no parameter")
  frozen = {k: v for k, v in flat.items() if k not in train}
  return checkpoint.unflatten(train), checkpoint.unflatten(frozen)


def merge_params(a: Params, b: Params) -> Params:
  return checkpoint.unflatten({**checkpoint.flatten(a), **checkpoint.flatten(b)})


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Params  # The trainable leaves only, f32.
  opt_state: Any


def init_state(trainable: Params, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state=tx.init(trainable))


def train_step(state: TrainState, batch: dict, frozen: Params, *, model, tx, loss_kind: str,
               yes_no_ids) -> tuple[TrainState, dict]:
  """One optimizer step on one batch. Pure: jit it with `jit_train_step`."""
  def loss_fn(trainable):
    params = merge_params(trainable, frozen)
    return losses.batch_loss(model, params, batch, loss_kind, yes_no_ids)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
  return TrainState(state.step + 1, params, opt_state), metrics


def jit_train_step(model, tx, loss_kind: str, yes_no_ids, mesh: jax.sharding.Mesh):
  """`train_step` jitted once: state donated, batch split over the mesh's data axis."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  fn = functools.partial(train_step, model=model, tx=tx, loss_kind=loss_kind,
                         yes_no_ids=tuple(yes_no_ids))
  return jax.jit(fn, donate_argnums=(0,), in_shardings=(replicated, data, replicated),
                 out_shardings=(replicated, replicated))


def default_mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def progress_line(step: int, total: int, lr: float, loss: float) -> str:
  """The colab's progress line: `step: 32/256   lr: 0.02995   loss: 0.3417`."""
  return f"step: {step:2d}/{total:2d}   lr: {lr:.5f}   loss: {loss:.4f}"
