#!/usr/bin/env python3
"""Memory plan of a training recipe, without allocating anything.

  ./10-plan.py --model paligemma-3b-pt-224 --batch 4 --accum 1 --trainable attn [--budget 12]
  ./10-plan.py --model paligemma2-10b-pt-224 --trainable lora --quantize int4
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.options import option


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = option(configs.DEFAULT_MODEL, "preset name")
  model_config: str | None = option(None, "model config JSON instead of a preset")
  batch: int = option(2, "examples per micro-batch")
  accum: int = option(1, "gradient accumulation steps")
  trainable: str = option("attn", "which parameters train", choices=sorted(configs.TRAINABLE))
  optimizer: str = option("sgd", "optimizer", choices=configs.OPTIMIZERS)
  remat: str = option("none", "what the decoder layers keep for the backward pass",
                      choices=configs.REMAT_POLICIES)
  seqlen: int = option(64, "text tokens (prompt + answer)")
  param_dtype: str = option("bfloat16", "dtype of the frozen parameters",
                            choices=("bfloat16", "float16", "float32"))
  quantize: str = option("none", "frozen matrices as --quantize loads them (int8, or 4-bit "
                         "with scales)", choices=configs.QUANTIZE_MODES)
  budget: float = option(12.0, "GiB per device")
  fsdp_table: bool = option(False, "also: devices needed with FSDP for 12, 24 and 80 GiB")


def main(cfg, project):
  import math
  from palijudge.model import config
  if not (math.isfinite(cfg.budget) and cfg.budget > 0):
    raise cli.UserError(f"--budget must be a number of GiB > 0, got {cfg.budget}")
  if cfg.seqlen < 1:
    raise cli.UserError(f"--seqlen must be >= 1, got {cfg.seqlen}")
  from palijudge.tools import planner
  model = (config.from_json_file(cfg.model_config) if cfg.model_config
           else config.preset(cfg.model))
  for line in planner.report(model, cfg.model_config or cfg.model, batch=cfg.batch,
                             accum=cfg.accum, trainable=cfg.trainable,
                             optimizer=cfg.optimizer, remat=cfg.remat, seqlen=cfg.seqlen,
                             param_dtype=cfg.param_dtype, budget_gib=cfg.budget,
                             fsdp_table=cfg.fsdp_table, quantize=cfg.quantize):
    print(line)


if __name__ == "__main__":
  cli.run(Config, main)
