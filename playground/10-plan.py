#!/usr/bin/env python3
"""Memory plan of a training recipe, without allocating anything.

  ./10-plan.py --model paligemma-3b-pt-224 --batch 4 --accum 1 --trainable attn [--budget 12]
  ./10-plan.py --model paligemma2-10b-pt-224 --trainable lora --quantize int4
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  from palijudge import params, quantize, train
  p = cli.parser(__doc__)
  p.add_argument("--model", default="paligemma-3b-pt-224", help="preset name")
  p.add_argument("--model-config", help="model config JSON instead of a preset")
  p.add_argument("--batch", type=int, default=2, help="examples per micro-batch")
  p.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
  p.add_argument("--trainable", default="attn", choices=sorted(params.TRAINABLE),
                 help="which parameters train")
  p.add_argument("--optimizer", default="sgd", choices=train.OPTIMIZERS, help="optimizer")
  p.add_argument("--remat", default="none", choices=train.REMAT_POLICIES,
                 help="what the decoder layers keep for the backward pass")
  p.add_argument("--seqlen", type=int, default=64, help="text tokens (prompt + answer)")
  p.add_argument("--param-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                 help="dtype of the frozen parameters")
  p.add_argument("--quantize", default="none", choices=quantize.MODES,
                 help="frozen matrices as --quantize loads them (int8, or 4-bit with scales)")
  p.add_argument("--budget", type=float, default=12.0, help="GiB per device")
  p.add_argument("--fsdp-table", action="store_true",
                 help="also: devices needed with FSDP for 12, 24 and 80 GiB")
  return p


def main(args, project):
  import math
  from palijudge.model import config
  if not (math.isfinite(args.budget) and args.budget > 0):
    raise cli.UserError(f"--budget must be a number of GiB > 0, got {args.budget}")
  if args.seqlen < 1:
    raise cli.UserError(f"--seqlen must be >= 1, got {args.seqlen}")
  from palijudge.tools import planner
  cfg = config.from_json_file(args.model_config) if args.model_config else config.preset(args.model)
  for line in planner.report(cfg, args.model_config or args.model, batch=args.batch,
                             accum=args.accum, trainable=args.trainable,
                             optimizer=args.optimizer, remat=args.remat, seqlen=args.seqlen,
                             param_dtype=args.param_dtype, budget_gib=args.budget,
                             fsdp_table=args.fsdp_table, quantize=args.quantize):
    print(line)


if __name__ == "__main__":
  cli.run(main, __file__, flags)
