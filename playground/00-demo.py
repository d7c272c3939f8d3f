#!/usr/bin/env python3
"""The whole workflow on the embedded default (tiny model, generated data), CPU only.

  ./00-demo.py                         # synthetic ad dataset
  ./00-demo.py --data path/data.jsonl  # your data, images relative to that file
  ./00-demo.py --quantize int4         # the vision tower frozen in 4 bits, the decoder trained
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  from palijudge import quantize
  p = cli.parser(__doc__)
  p.add_argument("--data", help="data.jsonl (default: generate the synthetic dataset)")
  p.add_argument("--preset", default="tiny", choices=("tiny", "tiny-gemma2"),
                 help="the embedded model")
  p.add_argument("--seed", type=int, default=0, help="seed of the data, model and split")
  p.add_argument("--quantize", default="none", choices=quantize.MODES,
                 help="freeze and quantize the vision encoder and projection; train the decoder")
  return p


def main(args, project):
  from palijudge.tools import demo
  cli.announce()
  valid = demo.run(project, project.find(args.data) if args.data else None,
                   preset=args.preset, seed=args.seed, quantize=args.quantize)
  ok, line = demo.gate(valid)
  print(line)
  return 0 if ok else 1


if __name__ == "__main__":
  cli.run(main, __file__, flags)
