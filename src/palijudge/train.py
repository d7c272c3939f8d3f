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
import optax

from palijudge import checkpoint
from palijudge import losses
from palijudge.errors import UserError

Params = dict[str, Any]

# big_vision-style param-path regexes: what each trainable set updates.
TRAINABLE = {
    "attn": r"^llm/layers/attn/",
    "llm": r"^llm/",
    "all": r".*",
    "lora": r"^llm/layers/lora/",  # Adapters only (see lora.py).
}
OPTIMIZERS = ("sgd", "adam")
REMAT_POLICIES = ("none", "dots", "dots_no_batch", "full")


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
  loss: losses.LossConfig = losses.LossConfig()
  print_every: int = 32
  accum: int = 1  # Gradient accumulation: effective batch = batch_size * accum.
  remat: str = "none"  # Rematerialisation policy of the scanned layers.
  fsdp: bool = False  # Shard params and optimizer state over devices.
  max_restarts: int = 0  # Restarts with the next seed after a divergence.
  diverge_loss: float = 1.0  # Guard threshold on the windowed loss (0: finite only).
  save_every: int = 0  # Steps between periodic train-state saves (0: never).
  lora_rank: int = 8  # Adapter rank, with trainable="lora".
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
    need(self.print_every >= 1, "print_every must be >= 1")
    need(self.accum >= 1, f"--accum must be >= 1, got {self.accum}")
    need(self.max_restarts >= 0, "--max-restarts must be >= 0")
    need(self.diverge_loss >= 0, "--diverge-loss must be >= 0")
    need(self.save_every >= 0, "--save-every must be >= 0")
    need(self.lora_rank >= 1, "--lora-rank must be >= 1")
    need(self.remat in REMAT_POLICIES, f"--remat must be one of {', '.join(REMAT_POLICIES)}")


def trains_encoder(trainable: str) -> bool:
  """Whether the trainable set touches the vision encoder (no feature cache then)."""
  return bool(re.search(TRAINABLE.get(trainable, trainable), "img/embedding/kernel"))


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


def _grads(trainable: Params, frozen: Params, batch: dict, model, loss, yes_no_ids):
  def loss_fn(t):
    return losses.batch_loss(model, merge_params(t, frozen), batch, loss, yes_no_ids)
  return jax.value_and_grad(loss_fn)(trainable)


def _accumulated_grads(trainable, frozen, batch, accum: int, **kw):
  """Mean loss and gradient over `accum` equal micro-batches, one at a time.

  The loss is a mean over examples, so the mean of the micro-batch means is
  the large batch's value; only one micro-batch's activations are alive.
  """
  micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

  def body(carry, mb):
    value, grads = _grads(trainable, frozen, mb, **kw)
    return jax.tree.map(jnp.add, carry, (value, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
  (value, grads), _ = jax.lax.scan(body, zeros, micro)
  return jax.tree.map(lambda x: x / accum, (value, grads))


def train_step(state: TrainState, batch: dict, frozen: Params, *, model, tx,
               loss: losses.LossConfig, yes_no_ids, accum: int = 1
               ) -> tuple[TrainState, dict]:
  """One optimizer step on one (possibly accumulated) batch. Pure; see `jit_train_step`."""
  kw = dict(model=model, loss=loss, yes_no_ids=yes_no_ids)
  if accum > 1:
    value, grads = _accumulated_grads(state.params, frozen, batch, accum, **kw)
  else:
    value, grads = _grads(state.params, frozen, batch, **kw)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": value, "grad_norm": optax.tree.norm(grads)}
  return TrainState(state.step + 1, params, opt_state), metrics


def jit_train_step(model, tx, loss: losses.LossConfig, yes_no_ids, mesh: jax.sharding.Mesh,
                   state_shardings, frozen_shardings, accum: int = 1):
  """`train_step` jitted once: state donated, batch split over the mesh's data axis.

  Shardings come from `sharding.state_shardings` / `param_shardings`
  (replicated for data parallelism, split leaves for FSDP).
  """
  from jax.sharding import NamedSharding, PartitionSpec as P
  data = NamedSharding(mesh, P("data"))
  fn = functools.partial(train_step, model=model, tx=tx, loss=loss,
                         yes_no_ids=tuple(yes_no_ids), accum=accum)
  return jax.jit(fn, donate_argnums=(0,), in_shardings=(state_shardings, data, frozen_shardings),
                 out_shardings=(state_shardings, NamedSharding(mesh, P())))


def progress_line(step: int, total: int, lr: float, loss: float) -> str:
  """The colab's progress line: `step: 32/256   lr: 0.02995   loss: 0.3417`."""
  return f"step: {step:2d}/{total:2d}   lr: {lr:.5f}   loss: {loss:.4f}"
