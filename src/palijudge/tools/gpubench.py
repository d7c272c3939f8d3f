"""`make bench-gpu`: full-size training and scoring speed on one GPU (issues #14, #15).

Why a second bench: `bench.py` compares our paths with the colab's on a small
CPU model; this one says what a real card does at the real sizes: compile
time, step time, throughput, model FLOP utilisation (MFU) and peak device
memory of each recipe; whether batch 4 runs in a 12 GiB card and how far
`make plan` is from the largest batch that really runs there; what the users'
allocator settings cost; and how much faster yes/no scoring from cached image
tokens is than the original scripts' greedy decoding.

Nothing is downloaded or read from disk. Weights are random, made on the
device by one jitted init, already in the recipe's dtypes (trainable leaves
float32, frozen ones bfloat16) and with the optimizer state; values are
hashed from element indices (`_uniform`), so the init needs no temporaries
and adds nothing to the step's peak; the host never holds the model.
Text is 64 tokens (prompt + answer + eos); image tokens are random `zimg`
arrays, as the frozen-encoder feature cache feeds them. The one place a batch
is built is `make_batch`.

Configurations are data: `Spec`s in named lists (`configs`). "default" is
#14's list in its order, "recipes" #15's (LoRA, trainable llm with full remat,
PaliGemma 2 at 224 and 448). On CPU the same names give small lists on the
"tiny" presets, so CI runs the harness end to end.

Isolation: on a GPU each configuration runs in its own process (`python -m
palijudge.tools.gpubench --child SPEC`) with the allocator environment it
names: XLA reads XLA_PYTHON_CLIENT_* once per process, the peak-memory
counter is a per-process high-water mark, and an out-of-memory must not
poison the next configuration. The orchestrating process never preallocates
(`main` sets XLA_PYTHON_CLIENT_PREALLOCATE=false for itself). The planner's
prediction for the largest-batch search is computed from the start of the
run by a CPU-only process (`PlannerJob`), while the GPU measures the other
configurations. On CPU, configurations without their own environment run
in-process (fast CI).
A time budget stops the run cleanly: configurations not started are printed
as skipped, a child still running when it ends is killed and printed so.

FLOPs (`flops_source: "analytic"`) are counted from the config, per step,
over the matmuls the step really runs (`decoder_matmuls`): with S = image
tokens + text tokens - 1 positions, every decoder layer but the last computes
q, k/v, attention scores, attention mix, output projection and the GeGLU MLP
over S positions; the last one computes k/v over S but the rest only at the Q
loss positions (Q = 2: answer and eos); then the vocabulary logits at Q
positions. A matmul (m x k) @ (k x n) is 2 m k n FLOPs. The step's FLOPs are

  forward + activation gradients + weight gradients
  = F + (F + F_scores) + F_trainable

where F is the forward total, F_scores the two attention matmuls (activation
x activation: both operands need a gradient) and F_trainable the forward FLOPs
of the matmuls whose weight is trained (LoRA: the adapted weights, whose full
gradient is formed before it reaches the adapters). The vision encoder is not
run (cached tokens); rematerialised recomputation and LoRA's small merge
products are not model FLOPs and are not counted; the input gradient of the
first layer is counted although unused (under 1/depth of the total). MFU =
FLOPs per step / step seconds / the device's dense bf16 peak (`PEAK_BF16`,
NVIDIA's spec sheets; None on CPU or an unknown card, so MFU is null there).
XLA's own count (`compiled.cost_analysis()`) is printed beside it as
`xla_flops`; it counts a scanned layer's body once, so it undercounts. On
2-layer variants of the 3B configurations, where that body is the whole
model, the two agree within 2% (attn, llm and LoRA recipes).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from palijudge import losses, phases, train
from palijudge.configs import OPTIMIZERS, REMAT_POLICIES
from palijudge import params as params_lib
from palijudge.data.batch import Batch
from palijudge.errors import UserError
from palijudge.model import config as config_lib
from palijudge.model import lora
from palijudge.model import paligemma as model_lib
from palijudge.tools import fullsize

GIB = 1024 ** 3
RESULT_PREFIX = "GPUBENCH_RESULT "
KINDS = ("train", "largest", "allocator", "score")
ALLOCATORS = ("default", "users")
ENV_KEYS = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR",
            "XLA_PYTHON_CLIENT_MEM_FRACTION")
YES_NO_IDS = (5, 6)  # Any two token ids: random weights have no "yes".
EOS_ID = 1
LOSS_POSITIONS = 2  # Answer token and eos: the positions the ce loss reads.
M3B = "paligemma-3b-pt-224"
PARAM_DTYPES = ("bfloat16", "float16", "float32")
# device_kind (lower case) regex -> dense bf16 FLOP/s (f32 accumulation), first match wins.
# H100/H200 SXM: 989 TFLOP/s; RTX 4070: 58.3 (466 FP8 sparse AI TOPS / 8;
# 29 TFLOP/s is its non-tensor fp32 rate).
PEAK_BF16 = ((r"h100.*pcie", 756e12), (r"h100.*nvl", 835e12), (r"h100", 989e12),
             (r"h200", 989e12), (r"a100", 312e12), (r"rtx 4070$", 58.3e12))
FIELDS = ("bench", "config", "kind", "status", "model", "recipe", "batch", "seqlen",
          "compile_s", "step_s", "steps", "examples_per_s", "tokens_per_s", "flops_per_step",
          "flops_source", "xla_flops", "peak_flops", "device_kind", "mfu", "peak_bytes", "env")


@dataclasses.dataclass(frozen=True)
class Spec:
  """One configuration. kind: "train" (one recipe at one batch), "largest"
  (largest batch that runs in the pool, against the planner), "allocator"
  (the users' allocator settings against JAX's, step time ratio), "score"
  (yes/no scoring images/s against the plain greedy-decoding path)."""
  name: str
  kind: str = "train"
  model: str = M3B
  trainable: str = "attn"
  optimizer: str = "sgd"
  remat: str = "none"
  lora_rank: int = 8
  batch: int = 4
  seqlen: int = 64              # Text tokens; the decoder sees image tokens + these.
  steps: int = 10               # Timed steps (median), after `warmup` untimed ones.
  warmup: int = 2
  param_dtype: str = "bfloat16"  # Frozen leaves; trainable ones are float32.
  allocator: str = "default"    # "default": JAX's; "users": PREALLOCATE=false, ALLOCATOR=platform.
  pool_gib: float | None = None  # Emulated card: a preallocated pool of this size.
  limit: int = 64               # largest: upper bound of the search.
  images: int = 256             # score: images per pass.
  plain_prompt_len: int = 128   # score: the plain path pads prompts to this.
  plain_new_tokens: int = 2     # score: decode steps of the plain path (see `measure_score`).

  def __post_init__(self):
    problems = [
        (self.kind in KINDS, f"kind must be one of {', '.join(KINDS)}"),
        (self.allocator in ALLOCATORS, f"allocator must be one of {', '.join(ALLOCATORS)}"),
        (self.model in config_lib.PRESETS, f"unknown model preset {self.model!r}"),
        (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
        (self.remat in REMAT_POLICIES, f"remat must be one of {REMAT_POLICIES}"),
        (self.param_dtype in PARAM_DTYPES, f"param_dtype must be one of {PARAM_DTYPES}"),
        (self.batch >= 1 and self.steps >= 1 and self.warmup >= 0 and self.lora_rank >= 1,
         "batch, steps and lora_rank must be >= 1, warmup >= 0"),
        (self.seqlen >= LOSS_POSITIONS + 2, f"seqlen must be >= {LOSS_POSITIONS + 2}"),
        (self.kind != "score" or self.images % self.batch == 0, "images % batch != 0"),
        (self.kind != "largest" or self.pool_gib, "a largest-batch search needs pool_gib"),
        (not params_lib.trains_encoder(self.trainable),
         "recipes that train the vision encoder need pixels, not cached image tokens"),
    ]
    for ok, msg in problems:
      if not ok:
        raise UserError(f"bench config {self.name!r}: {msg}")


# --- Configuration lists --------------------------------------------------------

def gpu_default() -> list[Spec]:
  """Issue #14, in its order."""
  return [Spec("3b-b2", batch=2), Spec("3b-b4", batch=4), Spec("3b-b8", batch=8),
          Spec("3b-b4-pool12", batch=4, pool_gib=12.0),
          Spec("3b-largest-pool12", kind="largest", pool_gib=12.0),
          Spec("3b-b4-users-allocator", kind="allocator", batch=4, allocator="users"),
          Spec("score-b8", kind="score", batch=8), Spec("score-b32", kind="score", batch=32)]


def gpu_recipes() -> list[Spec]:
  """Issue #15's later configurations."""
  pg2, pg2_448 = "paligemma2-3b-pt-224", "paligemma2-3b-pt-448"
  return [Spec("3b-lora-b4", trainable="lora", batch=4),
          Spec("3b-llm-remat-full-b4", trainable="llm", remat="full", batch=4),
          Spec("pg2-224-b2", model=pg2, batch=2), Spec("pg2-224-b4", model=pg2, batch=4),
          Spec("pg2-448-b2", model=pg2_448, batch=2), Spec("pg2-448-b4", model=pg2_448, batch=4)]


def cpu_default() -> list[Spec]:
  small = dict(model="tiny", batch=2, seqlen=16, steps=3, warmup=1)
  return [Spec("tiny-b2", **small), Spec("tiny-b2-pool12", pool_gib=12.0, **small),
          Spec("tiny-largest-pool12", kind="largest", pool_gib=12.0, **small),
          Spec("tiny-b2-users-allocator", kind="allocator", allocator="users", **small),
          Spec("score-tiny-b2", kind="score", images=4, plain_prompt_len=32, **small)]


def cpu_recipes() -> list[Spec]:
  small = dict(batch=2, seqlen=16, steps=3, warmup=1)
  return [Spec("tiny-lora-b2", model="tiny", trainable="lora", **small),
          Spec("tiny-llm-remat-full-b2", model="tiny", trainable="llm", remat="full", **small),
          Spec("tiny-gemma2-b2", model="tiny-gemma2", **small)]


CONFIG_SETS: dict[str, tuple[Callable[[], list[Spec]], Callable[[], list[Spec]]]] = {
    "default": (gpu_default, cpu_default), "recipes": (gpu_recipes, cpu_recipes)}


def configs(name: str, backend: str, only: Sequence[str] | None = None) -> list[Spec]:
  """The named list for this backend (CPU: the small one), optionally filtered by name."""
  if name not in CONFIG_SETS:
    raise UserError(f"unknown bench config set {name!r}; choose one of {', '.join(CONFIG_SETS)}")
  gpu, cpu = CONFIG_SETS[name]
  specs = cpu() if backend == "cpu" else gpu()
  if only:
    unknown = sorted(set(only) - {s.name for s in specs})
    if unknown:
      raise UserError(f"no configuration named {', '.join(unknown)} in {name!r} on {backend}; "
                      f"there are: {', '.join(s.name for s in specs)}")
    specs = [s for s in specs if s.name in only]
  return specs


# --- Arithmetic -------------------------------------------------------------------

def mem_fraction(pool_bytes: int, total_bytes: int) -> float:
  """XLA_PYTHON_CLIENT_MEM_FRACTION giving a pool of `pool_bytes` (XLA sizes the pool as
  total device memory x fraction), rounded down to 6 digits so it never exceeds it."""
  if total_bytes <= 0 or pool_bytes <= 0:
    raise UserError(f"device memory {total_bytes} and pool {pool_bytes} must be > 0 bytes")
  if pool_bytes > total_bytes:
    raise UserError(f"a {pool_bytes / GIB:g} GiB pool does not fit this device's "
                    f"{total_bytes / GIB:.1f} GiB")
  return math.floor(pool_bytes / total_bytes * 1e6) / 1e6


def percent_error(predicted: int | None, measured: int | None) -> float | None:
  """100 (predicted - measured) / measured: + means the planner promised too much."""
  if predicted is None or not measured:
    return None
  return round(100.0 * (predicted - measured) / measured, 1)


def largest_fitting(fits: Callable[[int], bool], guess: int, limit: int) -> int:
  """Largest b in 1..limit with fits(b), 0 if none; fits must be monotone.

  Starts at `guess` (the planner's answer), gallops away from it, then
  bisects: two probes when the guess is right, O(log) otherwise.
  """
  guess = min(max(guess, 1), limit)
  lo, hi = (guess, None) if fits(guess) else (0, guess)
  step = 1
  while hi is None:  # Up from a batch that runs.
    if lo >= limit:
      return lo
    b = min(lo + step, limit)
    lo, hi, step = (b, None, step * 2) if fits(b) else (lo, b, step)
  step = 1
  while lo == 0 and hi > 1:  # Down from a batch that does not.
    b = max(hi - step, 1)
    lo, hi, step = (b, hi, step) if fits(b) else (0, b, step * 2)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def peak_bf16_flops(device_kind: str, backend: str) -> float | None:
  if backend == "cpu":
    return None
  kind = device_kind.lower().strip()
  return next((peak for pattern, peak in PEAK_BF16 if re.search(pattern, kind)), None)


@dataclasses.dataclass(frozen=True)
class Matmul:
  name: str
  flops: int          # Forward FLOPs for the whole batch.
  weight: str | None  # Parameter path; None for activation x activation products.


def decoder_matmuls(cfg: config_lib.ModelConfig, batch: int, seq: int, queries: int,
                    head_cols: int) -> list[Matmul]:
  """The decoder's matmuls for `seq` positions, the last layer's outputs at `queries`
  positions, then logits over `head_cols` vocabulary rows (see the module docstring)."""
  c = cfg.llm
  d, f, nh, kh = c.width, c.mlp_dim, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  fused = c.num_heads == c.num_kv_heads
  q_w = "llm/layers/attn/qkv_einsum/w" if fused else "llm/layers/attn/q_einsum/w"
  kv_w = "llm/layers/attn/qkv_einsum/w" if fused else "llm/layers/attn/kv_einsum/w"

  def layers(t: int, n: int) -> list[Matmul]:
    m = 2 * n * batch
    return [Matmul("q", m * t * d * nh, q_w), Matmul("kv", m * seq * d * 2 * kh, kv_w),
            Matmul("scores", m * t * seq * nh, None), Matmul("mix", m * t * seq * nh, None),
            Matmul("attn_out", m * t * nh * d, "llm/layers/attn/attn_vec_einsum/w"),
            Matmul("mlp_in", m * t * d * 2 * f, "llm/layers/mlp/gating_einsum"),
            Matmul("mlp_out", m * t * f * d, "llm/layers/mlp/linear")]
  head = Matmul("logits", 2 * batch * queries * d * head_cols, "llm/embedder/input_embedding")
  return layers(seq, c.depth - 1) + layers(queries, 1) + [head]


def _trained(weight: str, trainable: str) -> bool:
  pattern = params_lib.trainable_pattern(trainable)
  adapter = weight.replace("llm/layers/", lora.PREFIX, 1) + "/a"
  return bool(pattern.search(weight) or (weight.startswith("llm/layers/")
                                         and pattern.search(adapter)))


def step_flops(cfg: config_lib.ModelConfig, trainable: str, batch: int, seqlen: int) -> int:
  """Model FLOPs of one train step (forward + backward), cached image tokens, ce loss."""
  mm = decoder_matmuls(cfg, batch, cfg.num_patches + seqlen - 1, LOSS_POSITIONS,
                       cfg.llm.vocab_size)
  forward = sum(m.flops for m in mm)
  activation = sum(m.flops * (2 if m.weight is None else 1) for m in mm)
  weights = sum(m.flops for m in mm if m.weight and _trained(m.weight, trainable))
  return forward + activation + weights


def score_flops(cfg: config_lib.ModelConfig, batch: int, seqlen: int) -> int:
  """Forward FLOPs of one yes/no scoring call (cached image tokens, 2 logits)."""
  return sum(m.flops for m in decoder_matmuls(cfg, batch, cfg.num_patches + seqlen, 1, 2))


# --- Inputs on the device -----------------------------------------------------------

def make_batch(cfg: config_lib.ModelConfig, rows: int, seqlen: int, zimg_dtype, seed: int = 0,
               answer: bool = True, image: str | None = "zimg", pad_to: int | None = None
               ) -> Batch:
  """The one place a batch is built (host arrays, `data.batch.collate`'s layout).

  Text: `seqlen` random tokens, all real: a prompt, then (with `answer`) the
  answer and eos that the loss reads. `pad_to` right-pads the text (the plain
  path's fixed length). image: "zimg" (cached image tokens), "pixels" (in
  [-1, 1]) or None. The same seed gives the same text and images.
  """
  rng = np.random.default_rng(seed)
  prefix = seqlen - (LOSS_POSITIONS if answer else 0)
  width = pad_to or seqlen
  tokens = rng.integers(3, cfg.llm.vocab_size, (rows, seqlen)).astype(np.int32)
  real = np.tile(np.arange(width) < seqlen, (rows, 1))
  suffix = (np.arange(width) >= prefix) & real
  idx = np.arange(prefix - 1, prefix - 1 + LOSS_POSITIONS, dtype=np.int32)
  label = rng.integers(0, 2, (rows,)).astype(np.int32)
  pixels = zimg = None
  if image == "pixels":
    s = cfg.image_size
    pixels = rng.uniform(-1, 1, (rows, s, s, 3)).astype(np.float32)
  elif image == "zimg":
    z = rng.standard_normal((rows, cfg.num_patches, cfg.llm.width), np.float32)
    zimg = z.astype(jnp.dtype(zimg_dtype))
  return Batch(text=np.pad(tokens, ((0, 0), (0, width - seqlen))),
               mask_ar=suffix.astype(np.int32), mask_loss=suffix.astype(np.int32),
               mask_input=real.astype(np.int32), prefix_len=np.full((rows,), prefix, np.int32),
               label=label, loss_idx=np.tile(idx, (rows, 1)),
               loss_w=np.ones((rows, LOSS_POSITIONS), np.float32),
               example_w=np.ones((rows,), np.float32), image=pixels, zimg=zimg)


def _mix(x):
  """murmur3's 32-bit finaliser: an elementwise hash XLA fuses into the output loop."""
  x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
  x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _uniform(shape: tuple[int, ...], seed: int, dtype: str):
  """Values with mean 0 and std INIT_STD, hashed from each element's (row, column).

  No RNG state and no temporaries: the whole tree's init compiles to loops
  that write the outputs directly (a threefry init needs several times the
  model's size in temporaries).
  """
  rows = shape[0] if len(shape) > 1 else 1
  grid = (rows, math.prod(shape) // rows)
  r = jax.lax.broadcasted_iota(jnp.uint32, grid, 0)
  c = jax.lax.broadcasted_iota(jnp.uint32, grid, 1)
  u = (_mix(c + _mix(r + jnp.uint32(seed))) >> 8).astype(jnp.float32) * (2.0 ** -24)
  half_width = fullsize.INIT_STD * math.sqrt(3.0)
  return ((2.0 * u - 1.0) * half_width).astype(dtype).reshape(shape)


def param_shapes(cfg: config_lib.ModelConfig, spec: Spec) -> dict:
  """Flat {path: ShapeDtypeStruct} of the recipe's tree (LoRA adapters added)."""
  shapes = model_lib.param_shapes(cfg)
  if spec.trainable == "lora":
    shapes = lora.with_adapter_shapes(shapes, spec.lora_rank)
  return params_lib.flatten(shapes)


def _random_tree(cfg: config_lib.ModelConfig, spec: Spec, seed: int, frozen_only: bool) -> dict:
  """Traced: the recipe's tree, trainable leaves f32, the others `param_dtype`."""
  pattern = params_lib.trainable_pattern(spec.trainable)
  out = {}
  for i, (name, sd) in enumerate(sorted(param_shapes(cfg, spec).items())):
    dtype = spec.param_dtype if frozen_only or not pattern.search(name) else "float32"
    shape, kind = tuple(sd.shape), fullsize.init_kind(name)
    if kind == "normal":
      out[name] = _uniform(shape, (seed * 1_000_003 + 7919 * i) % 2 ** 32, dtype)
    else:
      out[name] = (jnp.zeros if kind == "zeros" else jnp.ones)(shape, dtype)
  return params_lib.unflatten(out)


def random_params(cfg: config_lib.ModelConfig, spec: Spec, seed: int = 0) -> dict:
  """Every leaf frozen (`param_dtype`), made on the default device (scoring)."""
  return jax.jit(lambda: _random_tree(cfg, spec, seed, True))()


def random_state(cfg: config_lib.ModelConfig, spec: Spec, tx, seed: int = 0):
  """(TrainState of the trainable f32 leaves, frozen tree), made on the device by one jit."""
  def init():
    trainable, frozen = params_lib.split(_random_tree(cfg, spec, seed, False), spec.trainable)
    return train.init_state(trainable, tx), frozen
  return jax.jit(init)()


def compute_dtype(backend: str | None = None):
  """As the loader's "auto": bfloat16 on accelerators, float32 on CPU."""
  return jnp.float32 if (backend or jax.default_backend()) == "cpu" else jnp.bfloat16


# --- Measurements in this process ---------------------------------------------------

def recipe(spec: Spec) -> str:
  if spec.kind == "score":
    return f"yes/no score, cached image tokens, frozen {spec.param_dtype}"
  trained = f"lora r{spec.lora_rank}" if spec.trainable == "lora" else spec.trainable
  return f"{trained}, {spec.optimizer}, frozen {spec.param_dtype}, remat {spec.remat}"


def record(spec: Spec, status: str = "ok", **fields) -> dict:
  """One result line: every name in FIELDS (None where it does not apply), then extras."""
  rec = dict.fromkeys(FIELDS)
  rec.update(bench="gpu", config=spec.name, kind=spec.kind, status=status, model=spec.model,
             recipe=recipe(spec), batch=spec.batch, seqlen=spec.seqlen)
  rec.update(fields)
  return rec


def _device_fields() -> dict:
  dev = jax.devices()[0]
  try:
    limit = (dev.memory_stats() or {}).get("bytes_limit")
  except Exception:  # Backends without allocator statistics.
    limit = None
  return {"device_kind": getattr(dev, "device_kind", str(dev)), "backend": dev.platform,
          "peak_bytes": phases.device_peak_bytes(), "pool_bytes": limit}


def _xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Not every backend or version reports it.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _rates(spec: Spec, cfg, seconds_per_batch: float, flops: int) -> dict:
  examples = spec.batch / seconds_per_batch
  return {"step_s": round(seconds_per_batch, 6), "examples_per_s": round(examples, 3),
          "tokens_per_s": round(examples * (cfg.num_patches + spec.seqlen), 1),
          "flops_per_step": flops, "flops_source": "analytic"}


def _compiled_step(cfg, spec: Spec):
  """(compiled train step, state, frozen, batch, compile seconds), all on the device."""
  compute = compute_dtype()
  model = model_lib.build(cfg, compute, spec.remat)
  tcfg = train.TrainConfig(batch_size=spec.batch, steps=spec.warmup + spec.steps,
                           trainable=spec.trainable, optimizer=spec.optimizer,
                           remat=spec.remat, lora_rank=spec.lora_rank)
  tx = train.make_optimizer(tcfg)
  state, frozen = random_state(cfg, spec, tx)
  mesh = params_lib.make_mesh(jax.devices()[:1])
  step = train.jit_train_step(model, tx, losses.LossConfig(), YES_NO_IDS, mesh,
                              params_lib.tree_shardings(mesh, state),
                              params_lib.tree_shardings(mesh, frozen))
  batch = jax.device_put(make_batch(cfg, spec.batch, spec.seqlen, compute))
  t = time.perf_counter()
  compiled = step.lower(state, batch, frozen).compile()
  return compiled, state, frozen, batch, time.perf_counter() - t


def measure_train(spec: Spec) -> dict:
  """Compile seconds (AOT), then the median of `steps` step times after `warmup`."""
  cfg = config_lib.preset(spec.model)
  compiled, state, frozen, batch, compile_s = _compiled_step(cfg, spec)
  times = []
  for i in range(spec.warmup + spec.steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, frozen)
    jax.block_until_ready((state, metrics))
    if i >= spec.warmup:
      times.append(time.perf_counter() - t)
  loss = float(metrics["loss"])
  flops = step_flops(cfg, spec.trainable, spec.batch, spec.seqlen)
  return record(spec, compile_s=round(compile_s, 3), steps=len(times),
                **_rates(spec, cfg, statistics.median(times), flops),
                xla_flops=_xla_flops(compiled), loss=loss if math.isfinite(loss) else None,
                loss_finite=math.isfinite(loss), **_device_fields())


@functools.partial(jax.jit, static_argnums=0)
def _embed(model, img_params, image):
  return model.apply({"params": {"img": img_params}}, image,
                     method=model_lib.PaliGemma.embed_image)


def _passes(fn: Callable, items: list, reps: int) -> tuple[float, float, list]:
  """(seconds of the first call, compile included; median seconds of a pass; outputs)."""
  t = time.perf_counter()
  jax.block_until_ready(fn(items[0]))
  first = time.perf_counter() - t
  times, outs = [], []
  for _ in range(reps):
    t = time.perf_counter()
    outs = [fn(x) for x in items]
    jax.block_until_ready(outs)
    times.append(time.perf_counter() - t)
  return first, statistics.median(times), outs


def _chunks(host: Batch, size: int) -> list[Batch]:
  """`host` cut into batches of `size` rows, each on the device."""
  n = len(host.text)
  return [jax.device_put(jax.tree.map(lambda a, i=i: a[i:i + size], host))
          for i in range(0, n, size)]


def measure_score(spec: Spec) -> dict:
  """Yes/no scoring (one forward from cached image tokens) against the plain path.

  Same device, same images and prompts. Ours: image tokens computed once
  (`embed_s`, reported apart), then scoring passes (median of 3). Plain (the
  original scripts): prompt padded to `plain_prompt_len`, the vision encoder
  run for every image, greedy decoding with early stop at eos. A trained
  judge stops after answer + eos; random weights never emit eos, so that stop
  is emulated by decoding `plain_new_tokens` (2) tokens; the cache then holds
  those instead of the scripts' cap of 128, which only shortens the plain
  path's attention, in its favour.
  """
  cfg, compute = config_lib.preset(spec.model), compute_dtype()
  model = model_lib.build(cfg, compute)
  params = random_params(cfg, spec)
  ours = _chunks(make_batch(cfg, spec.images, spec.seqlen, compute, 1, False, "pixels"),
                 spec.batch)
  _, embed_s, zimgs = _passes(lambda b: _embed(model, params["img"], b.image), ours, 1)
  ids = jnp.asarray(YES_NO_IDS, jnp.int32)
  feeds = [(b.replace(image=None, zimg=z).inputs(), b.prefix_len)
           for b, z in zip(ours, zimgs, strict=True)]
  first, score_s, _ = _passes(
      lambda f: model_lib.yes_no_logits(model, params, f[0], f[1], ids), feeds, 3)
  prompts = _chunks(make_batch(cfg, spec.images, spec.seqlen, compute, 1, False, None,
                               spec.plain_prompt_len), spec.batch)
  plain = [p.replace(image=b.image).inputs() for p, b in zip(prompts, ours, strict=True)]
  plain_first, plain_s, _ = _passes(
      lambda x: model_lib.greedy_decode(model, params, x, spec.plain_new_tokens, EOS_ID), plain, 1)
  n, calls = spec.images, len(ours)
  rate, plain_rate = n / score_s, n / plain_s
  return record(spec, compile_s=round(max(first - score_s / calls, 0.0), 3), steps=calls,
                **_rates(spec, cfg, score_s / calls, score_flops(cfg, spec.batch, spec.seqlen)),
                images=n, ours_images_per_s=round(rate, 2), embed_s=round(embed_s, 4),
                ours_with_embed_images_per_s=round(n / (embed_s + score_s), 2),
                plain_images_per_s=round(plain_rate, 2), ratio=round(rate / plain_rate, 2),
                ratio_with_embed=round(n / (embed_s + score_s) / plain_rate, 2),
                plain_compile_s=round(max(plain_first - plain_s / calls, 0.0), 3),
                plain_prompt_len=spec.plain_prompt_len, plain_new_tokens=spec.plain_new_tokens,
                **_device_fields())


def _is_oom(text: str) -> bool:
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measure(spec: Spec) -> dict:
  """Runs a train or score spec here; a failure becomes a record (status oom/error)."""
  fn = measure_score if spec.kind == "score" else measure_train
  try:
    return fn(spec)
  except Exception as e:  # One configuration's failure must not end the run.
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return record(spec, "oom" if _is_oom(text) else "error",
                  error=f"{type(e).__name__}: {first[:300]}", **_device_fields())


# --- Child processes ----------------------------------------------------------------

def spec_env(spec: Spec, total_bytes: int | None) -> dict[str, str | None]:
  """The XLA allocator variables a configuration runs under (None: unset, JAX's default)."""
  env: dict[str, str | None] = dict.fromkeys(ENV_KEYS)
  if spec.pool_gib:
    if not total_bytes:
      raise UserError("device memory size unknown (no nvidia-smi): pass --device-memory-gib")
    fraction = mem_fraction(int(spec.pool_gib * GIB), total_bytes)
    env.update({"XLA_PYTHON_CLIENT_PREALLOCATE": "true",
                "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{fraction:.6f}"})
  elif spec.allocator == "users":
    env.update({"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                "XLA_PYTHON_CLIENT_ALLOCATOR": "platform"})
  return env


def child_environment(env: dict[str, str | None]) -> dict[str, str]:
  out = dict(os.environ)
  for key, value in env.items():
    if value is None:
      out.pop(key, None)
    else:
      out[key] = value
  src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out["PYTHONPATH"] = os.pathsep.join(p for p in (src, out.get("PYTHONPATH")) if p)
  out["JAX_ENABLE_COMPILATION_CACHE"] = "false"  # Honest compile times.
  return out


def run_child(spec: Spec, env: dict[str, str | None], timeout_s: float) -> dict:
  """`measure(spec)` in a fresh process under `env`, killed after `timeout_s`."""
  cmd = [sys.executable, "-m", "palijudge.tools.gpubench", "--child",
         json.dumps(dataclasses.asdict(spec))]
  try:
    proc = subprocess.run(cmd, env=child_environment(env), capture_output=True, text=True,
                          timeout=max(timeout_s, 0.01), check=False)
  except subprocess.TimeoutExpired:
    return record(spec, "skipped", reason="time budget ran out during this configuration",
                  env=env)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_PREFIX):
      return {**json.loads(line[len(RESULT_PREFIX):]), "env": env}
  lines = proc.stderr.strip().splitlines() or ["no output"]
  return record(spec, "oom" if _is_oom(proc.stderr) else "error", env=env,
                error=f"child exited {proc.returncode}: {lines[-1][:300]}")


def _child_main(argv: list[str]) -> int:
  """`--child SPEC`: measure; `--plan SPEC`: the planner's largest batch."""
  if len(argv) != 2 or argv[0] not in ("--child", "--plan"):
    print("usage: python -m palijudge.tools.gpubench --child|--plan SPEC_JSON", file=sys.stderr)
    return 2
  spec = Spec(**json.loads(argv[1]))
  result = measure(spec) if argv[0] == "--child" else {"predicted": planned_largest(spec)}
  print(RESULT_PREFIX + json.dumps(result), flush=True)
  return 0


class PlannerJob:
  """`make plan`'s largest batch for a spec, computed in a CPU-only process
  (JAX_PLATFORMS=cpu; the planner supports it) started when the run starts, so
  the GPU measures other configurations meanwhile instead of compiling the
  planner's candidate steps (minutes at 3B)."""

  def __init__(self, spec: Spec):
    env = child_environment({})
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "palijudge.tools.gpubench", "--plan",
           json.dumps(dataclasses.asdict(spec))]
    self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)

  def result(self, timeout_s: float) -> tuple[int | None, str | None]:
    """(predicted batch, None) or (None, why not); kills the job at the timeout."""
    try:
      out, err = self.proc.communicate(timeout=max(timeout_s, 0.01))
    except subprocess.TimeoutExpired:
      self.stop()
      return None, "time budget ran out while planning"
    for line in reversed(out.splitlines()):
      if line.startswith(RESULT_PREFIX):
        return json.loads(line[len(RESULT_PREFIX):])["predicted"], None
    lines = err.strip().splitlines() or ["no output"]
    return None, f"planner exited {self.proc.returncode}: {lines[-1][:300]}"

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.communicate()


# --- The run ------------------------------------------------------------------------

@dataclasses.dataclass
class Context:
  backend: str
  device_kind: str
  deadline: float
  isolate: bool                     # Every configuration in its own process.
  total_bytes: int | None = None    # Device memory, for the emulated pool.
  peak_override: float | None = None
  clock: Callable[[], float] = time.monotonic
  measured: dict = dataclasses.field(default_factory=dict)  # Reusable train records.
  planners: dict = dataclasses.field(default_factory=dict)  # Spec name -> PlannerJob.

  def left(self) -> float:
    return self.deadline - self.clock()


def finish(rec: dict, ctx: Context) -> dict:
  """Adds the peak FLOP/s used and MFU: one place for every path."""
  peak = ctx.peak_override or peak_bf16_flops(rec.get("device_kind") or ctx.device_kind,
                                              rec.get("backend") or ctx.backend)
  rec["peak_flops"] = peak
  if peak and rec.get("flops_per_step") and rec.get("step_s"):
    rec["mfu"] = round(rec["flops_per_step"] / rec["step_s"] / peak, 4)
  return rec


def _same_run(spec: Spec) -> Spec:
  """What a measurement depends on: the spec without its name."""
  return dataclasses.replace(spec, name="")


def run_measured(spec: Spec, ctx: Context) -> dict:
  env = spec_env(spec, ctx.total_bytes)
  if ctx.isolate or any(v is not None for v in env.values()):
    rec = run_child(spec, env, ctx.left())
  else:  # This process's own settings, whatever the spec's defaults.
    rec = {**measure(spec), "env": {k: os.environ.get(k) for k in ENV_KEYS}}
  if rec["status"] == "ok":
    ctx.measured[_same_run(spec)] = rec
  return rec


def run_allocator(spec: Spec, ctx: Context) -> dict:
  """The users' settings against JAX's default allocator, same step: step time ratio.

  The default side reuses an earlier row of the run with the same settings
  (issue #14's batch-4 row), else is measured here.
  """
  as_train = dataclasses.replace(spec, kind="train")
  users = run_measured(as_train, ctx)
  default = dataclasses.replace(as_train, allocator="default")
  base = ctx.measured.get(_same_run(default)) or run_measured(default, ctx)
  ratio = None
  if users.get("step_s") and base.get("step_s"):
    ratio = round(users["step_s"] / base["step_s"], 3)
  status = users["status"] if users["status"] != "ok" else base["status"]
  return {**users, "kind": spec.kind, "config": spec.name, "status": status,
          "baseline_step_s": base.get("step_s"), "baseline_env": base.get("env"),
          "baseline_status": base["status"], "step_ratio": ratio}


def planned_largest(spec: Spec) -> int:
  """`make plan`'s largest batch for the pool (abstract shapes, nothing allocated)."""
  from palijudge.tools import planner
  tcfg = train.TrainConfig(batch_size=1, trainable=spec.trainable, optimizer=spec.optimizer,
                           remat=spec.remat, lora_rank=spec.lora_rank)
  return planner.largest_batch(config_lib.preset(spec.model), tcfg, int(spec.pool_gib * GIB),
                               spec.seqlen, jnp.dtype(spec.param_dtype), limit=spec.limit)


class _Stopped(Exception):
  def __init__(self, rec: dict):
    super().__init__(rec["status"])
    self.rec = rec


def run_largest(spec: Spec, ctx: Context) -> dict:
  """Largest batch that runs in the pool (one child per probe) against the planner."""
  env = spec_env(spec, ctx.total_bytes)
  job = ctx.planners.pop(spec.name, None)
  predicted, why = job.result(ctx.left()) if job else (planned_largest(spec), None)
  probes: list[list] = []

  def fits(b: int) -> bool:
    probe = dataclasses.replace(spec, name=f"{spec.name}-b{b}", kind="train", batch=b,
                                steps=2, warmup=1)
    rec = run_child(probe, env, ctx.left())
    probes.append([b, rec["status"]])
    if rec["status"] not in ("ok", "oom"):
      raise _Stopped(rec)
    return rec["status"] == "ok"
  try:
    measured = largest_fitting(fits, predicted or 1, spec.limit)
  except _Stopped as stop:
    return record(spec, stop.rec["status"], batch=None, predicted=predicted, probes=probes,
                  env=env, reason=stop.rec.get("reason"), error=stop.rec.get("error"))
  return record(spec, batch=measured, predicted=predicted, probes=probes, env=env,
                pool_gib=spec.pool_gib, percent_error=percent_error(predicted, measured),
                planner_error=why)


def run_one(spec: Spec, ctx: Context) -> dict:
  if ctx.left() <= 0:
    return record(spec, "skipped", reason="time budget ran out before this configuration")
  if spec.pool_gib and ctx.backend == "cpu":
    return record(spec, "skipped", reason="an emulated device memory pool needs a GPU")
  if spec.pool_gib and not ctx.total_bytes:
    return record(spec, "skipped", reason="device memory size unknown: pass --device-memory-gib")
  runner = {"largest": run_largest, "allocator": run_allocator}.get(spec.kind, run_measured)
  return finish(runner(spec, ctx), ctx)


TABLE_HEAD = ("config", "model", "recipe", "batch", "compile s", "step s", "examples/s",
              "tokens/s", "TFLOP/step", "peak TFLOP/s", "MFU", "peak GiB", "notes")


def _cell(value, scale: float | None = None, fmt: str = ".3g") -> str:
  if value is None:
    return ""
  return format(value if scale is None else value * scale, fmt)


def notes(rec: dict) -> str:
  status, kind = rec["status"], rec["kind"]
  if status == "skipped":
    return f"skipped: {rec.get('reason')}"
  if status != "ok":
    return f"{status}: {rec.get('error') or rec.get('reason')}"[:160]
  if kind == "allocator":
    return (f"PREALLOCATE=false ALLOCATOR=platform; default allocator "
            f"{_cell(rec.get('baseline_step_s'), fmt='.4f')} s/step; ratio {rec['step_ratio']}")
  if kind == "largest":
    return (f"largest batch in {rec['pool_gib']:g} GiB; planner {rec['predicted']} "
            f"({_cell(rec['percent_error'], fmt='+.1f')}%)")
  if kind == "score":
    return (f"{rec['images']} images; plain path {rec['plain_images_per_s']} img/s; ratio "
            f"{rec['ratio']}x ({rec['ratio_with_embed']}x with image tokens computed)")
  env = rec.get("env") or {}
  if env.get("XLA_PYTHON_CLIENT_MEM_FRACTION"):
    return f"pool {_cell(rec.get('pool_bytes'), 1 / GIB, '.2f')} GiB"
  return ""


def table_row(rec: dict) -> str:
  cells = [rec["config"], rec["model"], rec["recipe"], _cell(rec["batch"], fmt="d"),
           _cell(rec["compile_s"], fmt=".1f"), _cell(rec["step_s"], fmt=".4f"),
           _cell(rec["examples_per_s"], fmt=".2f"), _cell(rec["tokens_per_s"], fmt=".0f"),
           _cell(rec["flops_per_step"], 1e-12, ".4g"), _cell(rec["peak_flops"], 1e-12, ".0f"),
           _cell(rec["mfu"], 100.0, ".1f") + ("%" if rec["mfu"] is not None else ""),
           _cell(rec["peak_bytes"], 1 / GIB, ".2f"), notes(rec)]
  return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def table(records: Sequence[dict]) -> str:
  head = "| " + " | ".join(TABLE_HEAD) + " |"
  rule = "| " + " | ".join("---" for _ in TABLE_HEAD) + " |"
  return "\n".join([head, rule] + [table_row(r) for r in records])


def run_all(specs: Sequence[Spec], ctx: Context, out: Callable[[str], None] = print
            ) -> list[dict]:
  """One JSON line per configuration as it finishes, then the markdown table."""
  for spec in specs:
    if spec.kind == "largest" and ctx.backend != "cpu" and ctx.total_bytes:
      ctx.planners[spec.name] = PlannerJob(spec)
  records = []
  try:
    for spec in specs:
      rec = run_one(spec, ctx)
      out(json.dumps(rec))
      records.append(rec)
  finally:
    for job in ctx.planners.values():  # Those of configurations that never ran.
      job.stop()
  out(table(records))
  return records


def device_total_bytes() -> int | None:
  """Total memory of the first visible NVIDIA GPU (nvidia-smi), None if unknown."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"
  cmd = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
         "-i", visible]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    return int(float(proc.stdout.split()[0]) * 2 ** 20) if proc.returncode == 0 else None
  except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
    return None


def main(config_set: str = "default", budget_s: float = 600.0,
         only: Sequence[str] | None = None, isolate: bool | None = None,
         device_memory_gib: float | None = None, peak_tflops: float | None = None,
         out: Callable[[str], None] = print) -> list[dict]:
  """Runs a configuration list within `budget_s` seconds; returns the records.

  Sets XLA_PYTHON_CLIENT_PREALLOCATE=false for this (orchestrating) process,
  so it must run before this process first uses jax on a GPU, and turns the
  persistent compilation cache off (honest compile times).
  """
  if budget_s < 0:
    raise UserError(f"--budget-s must be >= 0, got {budget_s}")
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  jax.config.update("jax_enable_compilation_cache", False)
  backend = jax.default_backend()
  kind = getattr(jax.devices()[0], "device_kind", backend)
  specs = configs(config_set, backend, only)
  total = (int(device_memory_gib * GIB) if device_memory_gib
           else None if backend == "cpu" else device_total_bytes())
  ctx = Context(backend, kind, time.monotonic() + budget_s,
                backend != "cpu" if isolate is None else isolate, total,
                peak_tflops * 1e12 if peak_tflops else None)
  out(json.dumps({"bench": "gpu", "measure": "machine", "backend": backend, "device_kind": kind,
                  "device_memory_bytes": total, "jax": jax.__version__,
                  "config_set": config_set, "budget_s": budget_s, "isolate": ctx.isolate}))
  return run_all(specs, ctx, out)


if __name__ == "__main__":
  sys.exit(_child_main(sys.argv[1:]))
