#!/usr/bin/env python3
"""The whole workflow on the embedded default (tiny model, generated data), CPU only.

  ./00-demo.py                         # synthetic ad dataset
  ./00-demo.py --data path/data.jsonl  # your data, images relative to that file
  ./00-demo.py --quantize int4         # the vision tower frozen in 4 bits, the decoder trained
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.options import option


@dataclasses.dataclass(frozen=True)
class Config:
  data: str | None = option(None, "data.jsonl (default: generate the synthetic dataset)")
  preset: str = option("tiny", "the embedded model", choices=("tiny", "tiny-gemma2"))
  seed: int = option(0, "seed of the data, model and split")
  quantize: str = option("none", "freeze and quantize the vision encoder and projection; "
                         "train the decoder", choices=configs.QUANTIZE_MODES)


def main(cfg, project):
  from palijudge.tools import demo
  cli.announce()
  valid = demo.run(project, project.find(cfg.data) if cfg.data else None,
                   preset=cfg.preset, seed=cfg.seed, quantize=cfg.quantize)
  ok, line = demo.gate(valid)
  print(line)
  return 0 if ok else 1


if __name__ == "__main__":
  cli.run(Config, main)
