#!/usr/bin/env python3
"""The whole workflow on the embedded default (tiny model, generated data), CPU only.

  ./00-demo.py                         # synthetic ad dataset
  ./00-demo.py --data path/data.jsonl  # your data, images relative to that file
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  p = cli.parser(__doc__)
  p.add_argument("--data", help="data.jsonl (default: generate the synthetic dataset)")
  p.add_argument("--preset", default="tiny", choices=("tiny", "tiny-gemma2"),
                 help="the embedded model")
  p.add_argument("--seed", type=int, default=0, help="seed of the data, model and split")
  return p


def main(args, project):
  from palijudge.tools import demo
  cli.announce()
  valid = demo.run(project, project.find(args.data) if args.data else None,
                   preset=args.preset, seed=args.seed)
  ok, line = demo.gate(valid)
  print(line)
  return 0 if ok else 1


if __name__ == "__main__":
  cli.run(main, __file__, flags)
