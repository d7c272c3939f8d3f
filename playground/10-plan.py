#!/usr/bin/env python3
"""Memory plan of a training recipe, without allocating anything.

  ./10-plan.py --model paligemma-3b-pt-224 --batch 4 --accum 1 --trainable attn [--budget 12]
"""
from palijudge import cli
from palijudge import params as params_lib


def main():
  import dataclasses
  import jax.numpy as jnp
  from palijudge import train
  from palijudge.model import config as config
  from palijudge.tools import planner as planner
  p = cli.parser(__doc__)
  p.add_argument("--model", default="paligemma-3b-pt-224", help="preset name")
  p.add_argument("--model-config", help="model config JSON instead of a preset")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--accum", type=int, default=1)
  p.add_argument("--trainable", default="attn", choices=sorted(params_lib.TRAINABLE))
  p.add_argument("--optimizer", default="sgd", choices=train.OPTIMIZERS)
  p.add_argument("--remat", default="none", choices=train.REMAT_POLICIES)
  p.add_argument("--seqlen", type=int, default=64, help="text tokens (prompt + answer)")
  p.add_argument("--param-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
  p.add_argument("--budget", type=float, default=12.0, help="GiB per device")
  p.add_argument("--fsdp-table", action="store_true",
                 help="also: devices needed with FSDP for 12, 24 and 80 GiB")
  args = p.parse_args()
  cfg = config.from_json_file(args.model_config) if args.model_config else config.preset(args.model)
  tcfg = train.TrainConfig(batch_size=args.batch, accum=args.accum, trainable=args.trainable,
                           optimizer=args.optimizer, remat=args.remat)
  dt = jnp.dtype(args.param_dtype)
  budget = int(args.budget * planner.GIB)
  plan = planner.plan(cfg, tcfg, args.seqlen, dt)
  print(f"{args.model_config or args.model}: batch {args.batch} x accum {args.accum}, "
        f"trainable {args.trainable}, {args.optimizer}, remat {args.remat}, "
        f"frozen params {args.param_dtype}, activations bfloat16")
  for line in planner.format_plan(plan, budget):
    print(line)
  best = planner.largest_batch(cfg, dataclasses.replace(tcfg, batch_size=1), budget,
                               args.seqlen, dt)
  print(f"  largest batch that fits {args.budget:g} GiB: {best or 'none'}")
  if args.fsdp_table:
    for gib in (12, 24, 80):
      n = planner.devices_needed(plan, gib * planner.GIB)
      print(f"  FSDP on {gib:>2} GiB GPUs: {n if n else 'does not fit at this batch'}"
            f"{' GPU(s)' if n else ''}")


if __name__ == "__main__":
  cli.run_main(main)
