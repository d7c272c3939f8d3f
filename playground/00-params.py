#!/usr/bin/env python3
"""Print every parameter of a model (path, shape, dtype) and the totals.

Computed with jax.eval_shape: nothing is allocated, so the 28B model is fine.
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.options import option


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = option(configs.DEFAULT_MODEL, "preset name")
  model_config: str | None = option(None, "model config JSON instead of a preset")


def main(cfg, project):
  from palijudge.model import config, paligemma
  model = (config.from_json_file(cfg.model_config) if cfg.model_config
           else config.preset(cfg.model))
  for line in paligemma.describe_params(model):
    print(line)


if __name__ == "__main__":
  cli.run(Config, main)
