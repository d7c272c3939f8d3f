"""`08-bench.py --quantize-cost` and `--quantize-memory`: what `--quantize` costs and saves.

- cost: the same images scored by a model loaded plain and quantized (each
  mode): max and mean |p(yes) difference| and how many yes/no decisions flip
  at 0.5. `trainable` names whose matrices stay unquantized (`lora`: every
  matrix is quantized; `attn`: the attention weights stay f32, as when the
  default recipe judges).
- memory: a checkpoint loaded in a fresh process per mode: bytes of its
  frozen tree as the device holds it (4-bit values packed), the host's peak
  RSS during the load, and the RSS before it (the runtime alone).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource
import time
from typing import Sequence

import numpy as np

from palijudge import configs
from palijudge import loader
from palijudge.evaluation import scoring
from palijudge import params as params_lib
from palijudge.data.examples import Example


def _scores(spec: loader.ModelSpec, examples: Sequence[Example], trainable: str,
            mode: str | None, eval_batch: int) -> np.ndarray:
  lm = loader.load(spec, trainable=trainable, quantize=mode, compute="float32")
  ecfg = configs.EvalConfig(eval_batch=eval_batch).resolved()
  return scoring.evaluate(lm, list(examples), ecfg).p_yes.astype(np.float64)


def cost(spec: loader.ModelSpec, examples: Sequence[Example], modes: Sequence[str],
         trainable: str = "lora", eval_batch: int = 8, name: str = "") -> list[dict]:
  """One row for the plain model (its p(yes) spread), then one per mode against it."""
  ref = _scores(spec, examples, trainable, None, eval_batch)
  rows = [{"measure": "quantize_cost", "model": name or spec.name, "trainable": trainable,
           "mode": "none", "n": len(ref), "p_yes_mean": round(float(ref.mean()), 4),
           "p_yes_std": round(float(ref.std()), 4), "yes_at_0.5": int((ref >= 0.5).sum())}]
  for mode in modes:
    p = _scores(spec, examples, trainable, mode, eval_batch)
    d = np.abs(p - ref)
    rows.append({**rows[0], "mode": mode, "max_abs_diff": float(f"{d.max():.3g}"),
                 "mean_abs_diff": float(f"{d.mean():.3g}"),
                 "flips": int(((p >= 0.5) != (ref >= 0.5)).sum())})
  return rows


def _rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB.


def _load_once(weights: str, mode: str, trainable: str) -> dict:
  """In a fresh process: load `weights` quantized, report bytes and peak RSS."""
  import jax
  jax.numpy.zeros(1).block_until_ready()  # The runtime itself, before any weight.
  before = _rss_bytes()
  t0 = time.time()
  spec = loader.resolve(weights)
  lm = loader.load(spec, trainable=trainable, quantize=None if mode == "none" else mode)
  seconds = time.time() - t0
  _, frozen = params_lib.split(lm.params, trainable)
  return {"measure": "quantize_memory", "weights": weights, "mode": mode,
          "trainable": trainable, "frozen_bytes": params_lib.nbytes(frozen),
          "tree_bytes": params_lib.nbytes(lm.params), "rss_before_load_bytes": before,
          "peak_rss_bytes": _rss_bytes(), "load_seconds": round(seconds, 1)}


def memory(weights: str, modes: Sequence[str], trainable: str = "attn") -> list[dict]:
  """`_load_once` per mode, each in its own spawned process (a clean peak RSS)."""
  ctx = multiprocessing.get_context("spawn")
  out = []
  for mode in modes:
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
      out.append(pool.submit(_load_once, weights, mode, trainable).result())
  return out


def main(cost_model: str | None, memory_weights: str | None, data: str | None,
         modes: Sequence[str], workdir: str, cache_dir: str, log=print) -> list[dict]:
  """08-bench.py's --quantize-cost MODEL (a checkpoint, a preset or `small`) and
  --quantize-memory NPZ, one JSON line per row."""
  import json
  import os
  from palijudge.data import examples as data_lib
  from palijudge.data import synthetic
  from palijudge.tools import bench
  rows = []
  if cost_model:
    if cost_model == "small":
      b = bench.setup(os.path.join(workdir, "small"))
      spec, exs = b.spec, b.examples
    else:
      spec = loader.resolve(cost_model, cache_dir=cache_dir)
      exs = None
    if data:
      exs = data_lib.read_examples(data)
    elif exs is None:
      exs = data_lib.read_jsonl(synthetic.make_dataset(os.path.join(workdir, "dataset"), n=96,
                                                       seed=0))
    for trainable in ("lora", "attn"):
      for row in cost(spec, exs, modes, trainable, name=cost_model):
        log(json.dumps(row))
        rows.append(row)
  if memory_weights:
    for row in memory(memory_weights, ("none", *modes)):
      log(json.dumps(row))
      rows.append(row)
  return rows
