#!/usr/bin/env python3
"""Speed benchmarks: one JSON line per measurement.

  ./08-bench.py [--steps 256] [--workdir cache/bench]     # ours vs the colab's plain path
  ./08-bench.py --gpu [--set default|recipes] [--budget-s 600]   # full-size models on a GPU

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
  bench.main(args.workdir or str(project.cache / "bench"), args.steps)


if __name__ == "__main__":
  cli.run(main, __file__, flags)
