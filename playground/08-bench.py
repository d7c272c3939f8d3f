#!/usr/bin/env python3
"""Speed benchmarks: one JSON line per measurement.

  ./08-bench.py [--steps 256] [--workdir cache/bench]     # ours vs the colab's plain path
  ./08-bench.py --gpu [--set default|recipes] [--budget-s 600]   # full-size models on a GPU
  ./08-bench.py --curves [--seeds 10] [--lrs 0.03,1] [--models small]   # the guard's evidence
  ./08-bench.py --quantize-cost checkpoints/demo.npz --data dataset/demo/data.jsonl
  ./08-bench.py --quantize-memory cache/random/paligemma-3b-pt-224.f16.npz

--gpu builds full-size models with random weights on the device and measures
step time, MFU, peak memory, the emulated 12 GiB card and scoring throughput
(see palijudge.tools.gpubench); on a CPU it runs a small configuration.
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli
from palijudge.options import group, option


@dataclasses.dataclass(frozen=True)
class Curves:
  curves: bool = option(False, "record the default recipe's loss curves (tiny and small "
                        "models, batch 2, lr 0.03/0.1/0.3/1.0) and count the guard's stops, "
                        "false stops and misses")
  seeds: int = option(10, "seeds per learning rate")
  lrs: str = option("0.03,0.1,0.3,1.0", "learning rates, comma-separated")
  models: str = option("tiny,small", "tiny and/or small, comma-separated")
  save: str | None = option(None, "also write the curves to this JSON file")


@dataclasses.dataclass(frozen=True)
class QuantizeCost:
  quantize_cost: str | None = option(None, "p(yes) of MODEL (checkpoint, preset, or small: the "
                                     "bench's model) loaded plain and quantized, on the same "
                                     "images: max/mean difference, flips", metavar="MODEL")
  data: str | None = option(None, "with --quantize-cost: the images (default: 96 generated)",
                            suppress_default=True)
  quantize_memory: str | None = option(None, "bytes of the frozen tree and peak host RSS of "
                                       "loading NPZ per mode", metavar="NPZ")
  modes: str = option("int8,int4,nf4", "--quantize modes, comma-separated")


@dataclasses.dataclass(frozen=True)
class Gpu:
  gpu: bool = option(False, "the full-size GPU benchmark instead")
  set: str = option("default", "configuration list: default (step, 12 GiB fit, allocator, "
                    "scoring), recipes (LoRA, full LLM, PaliGemma 2)",
                    choices=("default", "recipes"))
  budget_s: float = option(600.0, "seconds; configurations left when it runs out are printed "
                           "as skipped")
  only: tuple[str, ...] = option((), "run only this configuration (repeatable)", many=True,
                                 metavar="NAME")
  in_process: bool = option(False, "run configurations without their own environment in this "
                            "process (default on CPU only)")
  device_memory_gib: float | None = option(None, "device memory for the emulated 12 GiB pool "
                                           "(default: nvidia-smi)", suppress_default=True)
  peak_tflops: float | None = option(None, "dense bf16 peak for MFU (default: by device kind)",
                                     suppress_default=True)


@dataclasses.dataclass(frozen=True)
class Config:
  steps: int = option(256, "training steps in the whole iteration (the users run 256)")
  workdir: str | None = option(None, "generated model and data (default: cache/bench)",
                               suppress_default=True)
  rows: str = option("load,step,classify,iteration,floor,start", "measurements, "
                     "comma-separated: load, step, classify, iteration, floor (the least CPU "
                     "time the iteration's arithmetic allows on this machine; after iteration, "
                     "the largest speedup possible), start")
  curves: Curves = group(Curves, "--curves: the divergence guard's evidence")
  quantize: QuantizeCost = group(QuantizeCost, "--quantize-cost / --quantize-memory: what "
                                 "--quantize costs and saves")
  gpu: Gpu = group(Gpu, "--gpu: full-size models")


def main(cfg, project):
  g, q, c = cfg.gpu, cfg.quantize, cfg.curves
  if g.gpu:
    from palijudge.tools import gpubench
    gpubench.main(g.set, g.budget_s, list(g.only) or None, False if g.in_process else None,
                  g.device_memory_gib, g.peak_tflops)
    return
  from palijudge.tools import bench
  workdir = cfg.workdir or str(project.cache / "bench")
  if q.quantize_cost or q.quantize_memory:
    from palijudge.tools import quantbench
    quantbench.main(q.quantize_cost and project.find(q.quantize_cost),
                    q.quantize_memory and project.find(q.quantize_memory),
                    q.data and project.find(q.data), q.modes.split(","), workdir,
                    str(project.cache))
    return
  if c.curves:
    import json
    lrs = tuple(float(x) for x in c.lrs.split(","))
    models = tuple(m.strip() for m in c.models.split(","))
    if not set(models) <= {"tiny", "small"}:
      raise cli.UserError(f"--models takes tiny and/or small, got {c.models!r}")
    curves = bench.record_curves(workdir, seeds=c.seeds, lrs=lrs, steps=cfg.steps,
                                 models=models)
    if c.save:
      from palijudge import files
      files.write_text(c.save, json.dumps(curves))
    for row in bench.guard_table(curves):
      print(json.dumps(row))
    return
  rows = tuple(r.strip() for r in cfg.rows.split(","))
  if not set(rows) <= set(bench.ROWS):
    raise cli.UserError(f"--rows takes {', '.join(bench.ROWS)}, got {cfg.rows!r}")
  bench.main(workdir, cfg.steps, rows=rows)


if __name__ == "__main__":
  cli.run(Config, main)
