#!/usr/bin/env python3
"""Print every parameter of a model (path, shape, dtype) and the totals.

Computed with jax.eval_shape: nothing is allocated, so the 28B model is fine.
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  p = cli.parser(__doc__)
  p.add_argument("--model", default="paligemma-3b-pt-224", help="preset name")
  p.add_argument("--model-config", help="model config JSON instead of a preset")
  return p


def main(args, project):
  from palijudge.model import config, paligemma
  cfg = config.from_json_file(args.model_config) if args.model_config else config.preset(args.model)
  for line in paligemma.describe_params(cfg):
    print(line)


if __name__ == "__main__":
  cli.run(main, __file__, flags)
