"""`make bench`: our paths against the plain approach of big_vision's colab.

Each measurement is one JSON line, taken side by side in the same process:
- ours: text padded to the shortest bucket, vocabulary logits only where the
  loss or the answer needs them, image tokens from the frozen-encoder cache,
  yes/no scoring by one forward pass;
- plain: text padded to 128 tokens, full-vocabulary logits at every text
  position, the vision encoder recomputed at every step and evaluation,
  prediction by greedy decoding (prompt padded to 128, up to 4 new tokens,
  early stop at eos).
The CPU model is the issue's: image 224, ViT patch 14 / width 384 / depth 12 /
mlp 1536 / 6 heads; Gemma width 512 / depth 4 / mlp 2048 / 4 heads / 1 KV
head / head_dim 128 / vocab 4096; batch 4; f32.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from palijudge import checkpoint, losses
from palijudge.model import config as config
from palijudge.model import paligemma as predict
from palijudge import learn
from palijudge.evaluate import EvalConfig
from palijudge.data.examples import DEFAULT_PROMPT
from palijudge import loader as session
from palijudge import params as params_lib
from palijudge import train
from palijudge.data import synthetic as synthetic
from palijudge.data import examples as data_lib
from palijudge.model import paligemma as model_lib
from palijudge.data.features import FeatureCache
from palijudge.data.batch import Batch, Batches, PixelCache, training_stream
from palijudge.data import splits
from palijudge.errors import UserError

BENCH_CONFIG = dict(image_size=224,
                    img=dict(patch_size=14, width=384, depth=12, mlp_dim=1536, num_heads=6),
                    llm=dict(vocab_size=4096, width=512, depth=4, mlp_dim=2048, num_heads=4,
                             num_kv_heads=1, head_dim=128))
PLAIN_SEQLEN = 128
MAX_NEW = 4


def _timed(fn, warmup: int = 2, reps: int = 5) -> tuple[float, float]:
  """(seconds of the first call, incl. compile; median seconds of later calls)."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  for _ in range(warmup - 1):
    jax.block_until_ready(fn())
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


def _memory(lowered) -> int | None:
  try:
    m = lowered.compile().memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
  except Exception:  # Not every backend reports it.
    return None


def _line(name: str, ours: float, plain: float, unit: str, higher_is_better=True, **extra):
  speedup = ours / plain if higher_is_better else plain / ours
  rec = {"measure": name, "ours": round(ours, 4), "plain": round(plain, 4), "unit": unit,
         "speedup": round(speedup, 2), **extra}
  print(json.dumps(rec), flush=True)
  return rec


@dataclasses.dataclass
class Bench:
  lm: session.LoadedModel
  examples: list
  batch: Batch  # One collated training batch (bucketed), with pixels.


def setup(workdir: str, n_images: int = 96, model_config: dict = BENCH_CONFIG) -> Bench:
  cfg = config.from_dict(model_config, "bench config")
  tok_path = os.path.join(workdir, "tok.model")
  synthetic.write_tiny_tokenizer(tok_path)
  weights = os.path.join(workdir, "bench.npz")
  checkpoint.save(weights, model_lib.init_params(cfg, 0), cfg, {"tokenizer": tok_path})
  spec = session.ModelSpec(cfg, weights, tok_path, "bench")
  lm = session.load(spec, trainable="attn", compute="float32")
  examples = data_lib.read_jsonl(synthetic.make_dataset(os.path.join(workdir, "data"),
                                                        n=n_images, seed=0))
  _, batch = next(iter(Batches(examples[:4], lm.tok, cfg.image_size, 4,
                               DEFAULT_PROMPT, with_suffix=True)))
  return Bench(lm, examples, batch)


def bench_train_step(b: Bench) -> list[dict]:
  lm, batch = b.lm, b.batch
  trainable, frozen = params_lib.split(lm.params, "attn")
  tx = optax.sgd(0.03)
  mesh = params_lib.make_mesh(jax.devices()[:1])
  ssh = params_lib.tree_shardings(mesh, train.init_state(trainable, tx), False)
  fsh = params_lib.tree_shardings(mesh, frozen, False)
  step = train.jit_train_step(lm.model, tx, losses.LossConfig(), lm.yes_no_ids, mesh, ssh, fsh)
  feats = FeatureCache(lm.model, lm.params["img"], "bench", "first", disk_dir=None)
  ours_batch = feats.attach(b.examples[:4], batch)
  state = [train.init_state(jax.tree.map(jnp.array, trainable), tx)]

  def ours():
    state[0], m = step(state[0], ours_batch, frozen)
    return m["loss"]
  plain_batch = _pad_text(batch, PLAIN_SEQLEN)
  plain_params = [jax.tree.map(jnp.array, trainable)]

  def plain():
    plain_params[0], loss = _plain_step(lm.model, plain_params[0], frozen, plain_batch)
    return loss
  c_ours, t_ours = _timed(ours)
  c_plain, t_plain = _timed(plain)
  n = len(batch.text)
  mem_plain = _memory(_plain_step.lower(lm.model, plain_params[0], frozen, plain_batch))
  return [_line("train_step", n / t_ours, n / t_plain, "examples/s"),
          _line("train_step_compile", c_ours - t_ours, c_plain - t_plain, "s",
                higher_is_better=False),
          _line("train_step_peak_memory", _memory(step.lower(state[0], ours_batch, frozen)) or 0,
                mem_plain or 1, "bytes (XLA memory analysis)", higher_is_better=False)]


def _prompt_batch(b: Bench, seqlen: int | None = None) -> tuple[list, Batch]:
  chunk, batch = next(iter(Batches(b.examples[:4], b.lm.tok, b.lm.cfg.image_size, 4,
                                   DEFAULT_PROMPT, with_suffix=False)))
  return chunk, (_pad_text(batch, seqlen) if seqlen else batch)


def _plain_predict(lm, batch):
  return predict.greedy_decode(lm.model, lm.params, batch.inputs(), MAX_NEW, lm.tok.eos_id)


def bench_predict(b: Bench) -> list[dict]:
  lm = b.lm
  chunk, batch = _prompt_batch(b)
  feats = FeatureCache(lm.model, lm.params["img"], "bench", "first", disk_dir=None)
  zbatch = feats.attach(chunk, batch)
  ids = np.asarray(lm.yes_no_ids, np.int32)
  _, plain_batch = _prompt_batch(b, PLAIN_SEQLEN)
  n = len(batch.text)
  _, t_score = _timed(lambda: predict.yes_no_logits(lm.model, lm.params, zbatch.inputs(), zbatch.prefix_len, ids))
  _, t_dec = _timed(lambda: predict.greedy_decode(lm.model, lm.params, zbatch.inputs(), MAX_NEW,
                                                  lm.tok.eos_id))
  _, t_plain = _timed(lambda: _plain_predict(lm, plain_batch))
  return [_line("yes_no_classification", n / t_score, n / t_plain, "examples/s",
                ours_method="score, cached image tokens", plain_method="greedy decode"),
          _line("greedy_decode", n / t_dec, n / t_plain, "examples/s",
                ours_method="decode, bucketed prompt, cached image tokens")]


def _plain_iteration(b: Bench, train_set, valid_set, steps: int) -> None:
  """The colab's loop: decode-evaluate all/train/valid, train, decode-evaluate again."""
  lm, cache = b.lm, PixelCache()
  sets = [list(train_set) + list(valid_set), train_set, valid_set]

  def evaluate():
    for examples in sets:
      for _, batch in Batches(examples, lm.tok, lm.cfg.image_size, 4, DEFAULT_PROMPT,
                              with_suffix=False, cache=cache):
        jax.block_until_ready(_plain_predict(lm, _pad_text(batch, PLAIN_SEQLEN)))
  evaluate()
  trainable, frozen = params_lib.split(lm.params, "attn")
  trainable = jax.tree.map(jnp.array, trainable)
  stream = training_stream(train_set, steps, 4, 0)
  for _, batch in Batches(stream, lm.tok, lm.cfg.image_size, 4, DEFAULT_PROMPT,
                          with_suffix=True, cache=cache):
    trainable, loss = _plain_step(lm.model, trainable, frozen, _pad_text(batch, PLAIN_SEQLEN))
    float(loss)
  evaluate()


def bench_iteration(b: Bench, steps: int) -> list[dict]:
  train_set, valid_set = splits.split(b.examples, 10, 0)
  t = time.perf_counter()
  _plain_iteration(b, train_set, valid_set, steps)
  plain = time.perf_counter() - t
  tcfg = train.TrainConfig(batch_size=4, steps=steps, print_every=10 ** 6)
  t = time.perf_counter()
  learn.learn(b.lm, train_set, valid_set, tcfg, EvalConfig(eval_batch=4),
              names=("all", "train", "valid"), log=lambda _: None)
  ours = time.perf_counter() - t
  return [_line("do_learn_iteration", ours, plain, "s", higher_is_better=False,
                images=len(b.examples), split="86/10", train_steps=steps)]


def machine() -> dict:
  dev = jax.devices()[0]
  return {"machine": platform.node(), "cpu_count": os.cpu_count(), "backend": dev.platform,
          "device": getattr(dev, "device_kind", str(dev)), "jax": jax.__version__}


def main(workdir: str, steps: int, n_images: int = 96,
         model_config: dict = BENCH_CONFIG) -> list[dict]:
  # Honest compile times: the persistent compilation cache stays out of it.
  # Both paths start cold: no persistent compilation cache; the bench model's
  # spec has no cache folder, so image features stay in memory.
  jax.config.update("jax_enable_compilation_cache", False)
  print(json.dumps({"measure": "machine", **machine()}), flush=True)
  b = setup(workdir, n_images, model_config)
  return bench_train_step(b) + bench_predict(b) + bench_iteration(b, steps)


# --- Loss curves of the default recipe: the divergence guard's evidence -------

CURVE_LRS = (0.03, 0.1, 0.3, 1.0)


def record_curves(workdir: str, seeds: int = 10, lrs=CURVE_LRS, steps: int = 256,
                  models=("tiny", "small"), log=print) -> list[dict]:
  """Per-step losses of the users' recipe (attention only, SGD, batch 2) with no guard.

  One curve per (model, lr, seed) on 96 generated images split 86/10. Only a
  non-finite loss ends a run early (its curve then ends in nan).
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
    features = train.feature_cache(lm, "attn", "first")
    for lr in lrs:
      for seed in range(seeds):
        losses_ = _curve(lm, train_set, lr, seed, steps, features)
        out.append({"model": name, "lr": lr, "seed": seed, "loss": losses_})
        log(json.dumps({"model": name, "lr": lr, "seed": seed, "steps": len(losses_),
                        "last": losses_[-1]}))
  return out


def _curve(lm, examples, lr: float, seed: int, steps: int, features) -> list[float]:
  tcfg = train.TrainConfig(lr=lr, seed=seed, steps=steps, diverge_loss=0.0, print_every=1)
  seen: list[float] = []

  def keep(line: str) -> None:
    if line.startswith("step:"):
      seen.append(float(line.rsplit("loss:", 1)[1]))
  try:
    train.fit(lm, examples, tcfg, train.FitOptions(prompt=DEFAULT_PROMPT), log=keep,
              features=features)
  except UserError:  # A non-finite loss: the run is over.
    seen.append(float("nan"))
  return seen
