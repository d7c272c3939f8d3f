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
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  p = cli.parser(__doc__)
  p.add_argument("--steps", type=int, default=256,
                 help="training steps in the whole iteration (the users run 256)")
  p.add_argument("--workdir", default=None, help="generated model and data (default: cache/bench)")
  p.add_argument("--rows", default="load,step,classify,iteration,start",
                 help="measurements, comma-separated: load, step, classify, iteration, start")
  g = p.add_argument_group("--curves: the divergence guard's evidence")
  g.add_argument("--curves", action="store_true",
                 help="record the default recipe's loss curves (tiny and small models, batch 2, "
                      "lr 0.03/0.1/0.3/1.0) and count the guard's stops, false stops and misses")
  g.add_argument("--seeds", type=int, default=10, help="seeds per learning rate")
  g.add_argument("--lrs", default="0.03,0.1,0.3,1.0", help="learning rates, comma-separated")
  g.add_argument("--models", default="tiny,small", help="tiny and/or small, comma-separated")
  g.add_argument("--save", help="also write the curves to this JSON file")
  g = p.add_argument_group("--quantize-cost / --quantize-memory: what --quantize costs and saves")
  g.add_argument("--quantize-cost", metavar="MODEL",
                 help="p(yes) of MODEL (checkpoint, preset, or small: the bench's model) loaded "
                      "plain and quantized, on the same images: max/mean difference, flips")
  g.add_argument("--data", help="with --quantize-cost: the images (default: 96 generated)")
  g.add_argument("--quantize-memory", metavar="NPZ",
                 help="bytes of the frozen tree and peak host RSS of loading NPZ per mode")
  g.add_argument("--modes", default="int8,int4,nf4", help="--quantize modes, comma-separated")
  g = p.add_argument_group("--gpu: full-size models")
  g.add_argument("--gpu", action="store_true", help="the full-size GPU benchmark instead")
  g.add_argument("--set", default="default", choices=("default", "recipes"),
                 help="configuration list: default (step, 12 GiB fit, allocator, scoring), "
                      "recipes (LoRA, full LLM, PaliGemma 2)")
  g.add_argument("--budget-s", type=float, default=600.0,
                 help="seconds; configurations left when it runs out are printed as skipped")
  g.add_argument("--only", action="append", metavar="NAME",
                 help="run only this configuration (repeatable)")
  g.add_argument("--in-process", action="store_true",
                 help="run configurations without their own environment in this process "
                      "(default on CPU only)")
  g.add_argument("--device-memory-gib", type=float,
                 help="device memory for the emulated 12 GiB pool (default: nvidia-smi)")
  g.add_argument("--peak-tflops", type=float,
                 help="dense bf16 peak for MFU (default: by device kind)")
  return p


def main(args, project):
  if args.gpu:
    from palijudge.tools import gpubench
    gpubench.main(args.set, args.budget_s, args.only, False if args.in_process else None,
                  args.device_memory_gib, args.peak_tflops)
    return
  from palijudge.tools import bench
  workdir = args.workdir or str(project.cache / "bench")
  if args.quantize_cost or args.quantize_memory:
    from palijudge.tools import quantbench
    quantbench.main(args.quantize_cost and project.find(args.quantize_cost),
                    args.quantize_memory and project.find(args.quantize_memory),
                    args.data and project.find(args.data), args.modes.split(","), workdir,
                    str(project.cache))
    return
  if args.curves:
    import json
    lrs = tuple(float(x) for x in args.lrs.split(","))
    models = tuple(m.strip() for m in args.models.split(","))
    if not set(models) <= {"tiny", "small"}:
      raise cli.UserError(f"--models takes tiny and/or small, got {args.models!r}")
    curves = bench.record_curves(workdir, seeds=args.seeds, lrs=lrs, steps=args.steps,
                                 models=models)
    if args.save:
      from palijudge import files
      files.write_text(args.save, json.dumps(curves))
    for row in bench.guard_table(curves):
      print(json.dumps(row))
    return
  rows = tuple(r.strip() for r in args.rows.split(","))
  if not set(rows) <= set(bench.ROWS):
    raise cli.UserError(f"--rows takes {', '.join(bench.ROWS)}, got {args.rows!r}")
  bench.main(workdir, args.steps, rows=rows)


if __name__ == "__main__":
  cli.run(main, __file__, flags)
