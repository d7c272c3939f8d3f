#!/usr/bin/env python3
"""Random full-size checkpoint in the official Kaggle layout (params/... keys, float16).

For running the real workflow at full size without the real weights: the file is
streamed one array at a time, with a small tokenizer beside it, so that
`--model cache/random/paligemma-3b-pt-224.f16.npz` loads it like the Kaggle file.

  ./11-write_random_checkpoint.py [--model paligemma-3b-pt-224] [--out FILE] [--seed 0]
                                  [--dtype float16] [--dry-run]
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  p = cli.parser(__doc__)
  p.add_argument("--model", default="paligemma-3b-pt-224", help="preset name")
  p.add_argument("--out", help="output .npz (default: cache/random/<Kaggle file name>)")
  p.add_argument("--seed", type=int, default=0, help="seed of the values")
  p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                 help="dtype of every array")
  p.add_argument("--dry-run", action="store_true",
                 help="list the arrays (key, shape, dtype) and totals, write nothing")
  return p


def main(args, project):
  import json
  import os
  from palijudge.model import config
  from palijudge.tools import fullsize
  cfg = config.preset(args.model)
  if args.dry_run:
    entries = list(fullsize.entries(cfg, args.dtype))
    for e in entries:
      print(f"{e.key}\t{e.shape}\t{e.dtype.name}")
    print(json.dumps({"arrays": len(entries), "params": sum(e.size for e in entries),
                      "bytes": sum(e.nbytes for e in entries)}))
    return
  out = args.out or str(project.cache / "random" / fullsize.default_filename(args.model,
                                                                             args.dtype))
  tok = fullsize.write_tokenizer(os.path.join(os.path.dirname(os.path.abspath(out)),
                                              "random_tokenizer.model"), cfg.llm.vocab_size)
  summary = fullsize.write_random_checkpoint(out, cfg, args.seed, args.dtype,
                                             {"model": args.model, "tokenizer": tok})
  print(json.dumps(summary))


if __name__ == "__main__":
  cli.run(main, __file__, flags)
