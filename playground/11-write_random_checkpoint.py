#!/usr/bin/env python3
"""Random full-size checkpoint in the official Kaggle layout (params/... keys, float16).

For running the real workflow at full size without the real weights: the file is
streamed one array at a time, with a small tokenizer beside it, so that
`--model cache/random/paligemma-3b-pt-224.f16.npz` loads it like the Kaggle file.

  ./11-write_random_checkpoint.py [--model paligemma-3b-pt-224] [--out FILE] [--seed 0]
                                  [--dtype float16] [--dry-run]
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.options import option


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = option(configs.DEFAULT_MODEL, "preset name")
  out: str | None = option(None, "output .npz (default: cache/random/<Kaggle file name>)",
                           suppress_default=True)
  seed: int = option(0, "seed of the values")
  dtype: str = option("float16", "dtype of every array",
                      choices=("float16", "bfloat16", "float32"))
  dry_run: bool = option(False, "list the arrays (key, shape, dtype) and totals, write nothing")


def main(cfg, project):
  import json
  import os
  from palijudge.model import config
  from palijudge.tools import fullsize
  model = config.preset(cfg.model)
  if cfg.dry_run:
    entries = list(fullsize.entries(model, cfg.dtype))
    for e in entries:
      print(f"{e.key}\t{e.shape}\t{e.dtype.name}")
    print(json.dumps({"arrays": len(entries), "params": sum(e.size for e in entries),
                      "bytes": sum(e.nbytes for e in entries)}))
    return
  out = cfg.out or str(project.cache / "random" / fullsize.default_filename(cfg.model,
                                                                             cfg.dtype))
  tok = fullsize.write_tokenizer(os.path.join(os.path.dirname(os.path.abspath(out)),
                                              "random_tokenizer.model"), model.llm.vocab_size)
  summary = fullsize.write_random_checkpoint(out, model, cfg.seed, cfg.dtype,
                                             {"model": cfg.model, "tokenizer": tok})
  print(json.dumps(summary))


if __name__ == "__main__":
  cli.run(Config, main)
