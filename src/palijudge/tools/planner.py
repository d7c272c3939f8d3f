"""`make plan`: will this recipe fit the GPU? Answered without allocating.

Bytes by category:
- frozen params: count x size of `param_dtype` (half precision), or with
  `--quantize` the abstract QArrays the loader would make (int8 or packed
  4-bit values, f32 scales; `quantize.abstract`);
- trainable params, their gradients: f32;
- optimizer state: none for SGD, two f32 moments for Adam;
- activations and temporaries: XLA's own memory analysis of the compiled
  train step, lowered on abstract shapes (`jax.ShapeDtypeStruct`), so no
  array is ever created (on CPU, a 16-bit recipe is measured in f32 and
  scaled: see `activation_bytes`). It is measured with image tokens from the
  frozen-encoder cache when the encoder is frozen, as training runs.
With FSDP over n devices, parameters, gradients and optimizer state are
divided by n; each device keeps one micro-batch of activations, and holds one
decoder layer's weights whole while XLA's gather of them is in use
(`Plan.gathered`: the scanned layers are gathered one at a time).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from palijudge.model import config as config_lib
from palijudge import train
from palijudge import params as params_lib
from palijudge import quantize as quantize_lib
from palijudge.params import flatten, unflatten
from palijudge.model import lora
from palijudge.model import paligemma as model_lib
from palijudge.data.batch import Batch

GIB = 1024 ** 3
_WIDE = {jnp.dtype(jnp.int4): jnp.dtype(jnp.int8), jnp.dtype(jnp.uint4): jnp.dtype(jnp.uint8)}


@dataclasses.dataclass(frozen=True)
class Plan:
  frozen: int
  trainable: int
  gradients: int
  optimizer: int
  activations: int
  gathered: int = 0  # One decoder layer's weights, whole on each device under FSDP.

  @property
  def state(self) -> int:
    return self.frozen + self.trainable + self.gradients + self.optimizer

  @property
  def total(self) -> int:
    return self.state + self.activations

  def per_device(self, n: int) -> int:
    return math.ceil(self.state / n) + self.activations + (self.gathered if n > 1 else 0)


def _abstract_batch(cfg: config_lib.ModelConfig, batch: int, seqlen: int, cached: bool,
                    compute) -> Batch:
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  s = cfg.image_size
  return Batch(text=i32(batch, seqlen), mask_ar=i32(batch, seqlen),
               mask_loss=i32(batch, seqlen), mask_input=i32(batch, seqlen),
               prefix_len=i32(batch), label=i32(batch), loss_idx=i32(batch, 2),
               loss_w=f32(batch, 2), example_w=f32(batch),
               zimg=jax.ShapeDtypeStruct((batch, cfg.num_patches, cfg.llm.width), compute)
               if cached else None,
               image=None if cached else f32(batch, s, s, 3))


def _split(cfg, trainable: str, param_dtype, quantize: str | None = None, lora_rank: int = 8):
  """(trainable f32, frozen) abstract trees of the recipe; `lora` adds its adapters."""
  pattern = params_lib.trainable_pattern(trainable)
  shapes = model_lib.param_shapes(cfg)
  if trainable == "lora":
    shapes = lora.with_adapter_shapes(shapes, lora_rank)
  flat = flatten(shapes)
  t = {k: jax.ShapeDtypeStruct(v.shape, jnp.float32) for k, v in flat.items()
       if pattern.search(k)}
  f = {k: jax.ShapeDtypeStruct(v.shape, param_dtype) for k, v in flat.items() if k not in t}
  return unflatten(t), quantize_lib.abstract(unflatten(f),
                                             quantize_lib.describe(quantize, trainable))


def activation_bytes(cfg, tcfg: train.TrainConfig, seqlen: int, param_dtype, compute,
                     quantize: str | None = None) -> int:
  """Temporaries of the compiled train step (XLA memory analysis), per device.

  XLA's CPU backend has no 16-bit matmuls: it converts every half-precision
  weight to f32 up front, which a GPU never does. On CPU a 16-bit recipe is
  therefore compiled in f32 and its temporaries scaled by the size ratio.
  Likewise it widens every 4-bit matrix (int4, NF4) to 8 bits up front, a
  copy of all of them: on CPU their values are planned in 8-bit containers
  (the same scales and dequantization), and `Plan.frozen` counts them packed.
  """
  scale = 1.0
  if jax.default_backend() == "cpu" and jnp.dtype(compute).itemsize < 4:
    scale = jnp.dtype(compute).itemsize / 4
    param_dtype = compute = jnp.float32
  return int(scale * _temporaries(cfg, tcfg, seqlen, param_dtype, compute, quantize))


@functools.lru_cache(maxsize=None)  # A compile per call: the batch search repeats batches.
def _temporaries(cfg, tcfg: train.TrainConfig, seqlen: int, param_dtype, compute,
                 quantize: str | None = None) -> int:
  trainable, frozen = _split(cfg, tcfg.trainable, param_dtype, quantize, tcfg.lora_rank)
  if jax.default_backend() == "cpu":  # See `activation_bytes`.
    frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, _WIDE.get(x.dtype, x.dtype)),
                          frozen)
  tx = train.make_optimizer(tcfg)
  state = jax.eval_shape(lambda t: train.init_state(t, tx), trainable)
  cached = not params_lib.trains_encoder(tcfg.trainable)
  batch = _abstract_batch(cfg, tcfg.batch_size * tcfg.accum, seqlen, cached, compute)
  mesh = params_lib.make_mesh(jax.devices()[:1])
  step = train.jit_train_step(
      model_lib.build(cfg, compute, tcfg.remat), tx, tcfg.loss, (0, 1), mesh,
      params_lib.tree_shardings(mesh, state), params_lib.tree_shardings(mesh, frozen),
      tcfg.accum)
  analysis = step.lower(state, batch, frozen).compile().memory_analysis()
  return int(analysis.temp_size_in_bytes)


def plan(cfg: config_lib.ModelConfig, tcfg: train.TrainConfig, seqlen: int = 64,
         param_dtype=jnp.bfloat16, compute=jnp.bfloat16, quantize: str | None = None) -> Plan:
  """`quantize`: the frozen matrices as `--quantize` loads them (None: `param_dtype`)."""
  trainable, frozen = _split(cfg, tcfg.trainable, param_dtype, quantize, tcfg.lora_rank)
  t = params_lib.nbytes(trainable)
  moments = 2 if tcfg.optimizer == "adam" else 0
  return Plan(frozen=params_lib.nbytes(frozen), trainable=t, gradients=t, optimizer=moments * t,
              activations=activation_bytes(cfg, tcfg, seqlen, param_dtype, compute, quantize),
              gathered=layer_bytes(trainable, frozen, cfg.llm.depth))


def layer_bytes(trainable, frozen, depth: int) -> int:
  """Bytes of one decoder layer's weights (the stacked `llm/layers/` leaves / depth)."""
  flat = {**flatten(trainable), **flatten(frozen)}
  return sum(params_lib.nbytes(v) for k, v in flat.items() if k.startswith("llm/layers/")) \
      // depth


def largest_batch(cfg, tcfg: train.TrainConfig, budget: int, seqlen: int = 64,
                  param_dtype=jnp.bfloat16, compute=jnp.bfloat16, limit: int = 64,
                  quantize: str | None = None) -> int:
  """Largest micro-batch (with `tcfg.accum`) whose plan fits `budget`; 0 if none."""
  def fits(b):
    p = plan(cfg, dataclasses.replace(tcfg, batch_size=b), seqlen, param_dtype, compute,
             quantize)
    return p.total <= budget
  lo, hi = 0, 1
  while hi <= limit and fits(hi):
    lo, hi = hi, hi * 2
  hi = min(hi, limit + 1)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def devices_needed(p: Plan, budget: int, max_devices: int = 1024) -> int | None:
  """Fewest FSDP devices whose per-device share fits `budget` (None: never)."""
  if p.total <= budget:
    return 1
  room = budget - p.activations - p.gathered
  if room <= 0:
    return None
  n = max(2, math.ceil(p.state / room))
  return n if n <= max_devices else None


def format_plan(p: Plan, budget: int) -> list[str]:
  rows = [("frozen params", p.frozen), ("trainable params (f32)", p.trainable),
          ("gradients (f32)", p.gradients), ("optimizer state", p.optimizer),
          ("activations + temporaries", p.activations), ("total", p.total)]
  lines = [f"  {name:<28}{b / GIB:8.2f} GiB" for name, b in rows]
  verdict = "fits" if p.total <= budget else "does NOT fit"
  lines.append(f"  {verdict} in {budget / GIB:g} GiB")
  return lines




def report(cfg: config_lib.ModelConfig, name: str, *, batch: int, accum: int, trainable: str,
           optimizer: str, remat: str, seqlen: int, param_dtype: str, budget_gib: float,
           fsdp_table: bool, quantize: str | None = None) -> list[str]:
  """The lines `make plan` prints: the plan, the largest batch, FSDP device counts."""
  tcfg = train.TrainConfig(batch_size=batch, accum=accum, trainable=trainable,
                           optimizer=optimizer, remat=remat)
  dt = jnp.dtype(param_dtype)
  budget = int(budget_gib * GIB)
  p = plan(cfg, tcfg, seqlen, dt, quantize=quantize)
  frozen = param_dtype if quantize in (None, "none") else f"{param_dtype}, matrices {quantize}"
  lines = [f"{name}: batch {batch} x accum {accum}, trainable {trainable}, {optimizer}, "
           f"remat {remat}, frozen params {frozen}, activations bfloat16"]
  lines += format_plan(p, budget)
  best = largest_batch(cfg, dataclasses.replace(tcfg, batch_size=1), budget, seqlen, dt,
                       quantize=quantize)
  lines.append(f"  largest batch that fits {budget_gib:g} GiB: {best or 'none'}")
  if fsdp_table:
    for gib in (12, 24, 80):
      n = devices_needed(p, gib * GIB)
      lines.append(f"  FSDP on {gib:>2} GiB GPUs: {n if n else 'does not fit at this batch'}"
                   f"{' GPU(s)' if n else ''}")
  return lines
