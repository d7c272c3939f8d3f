#!/usr/bin/env python3
"""The whole workflow on the embedded default (tiny model, generated data), CPU only.

  ./00-demo.py                         # synthetic ad dataset
  ./00-demo.py --data path/data.jsonl  # your data, images relative to that file
"""
from palijudge import cli


def main():
  from palijudge.tools import demo as demo
  p = cli.parser(__doc__)
  p.add_argument("--data", help="data.jsonl (default: generate the synthetic dataset)")
  p.add_argument("--preset", default="tiny", choices=("tiny", "tiny-gemma2"))
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  valid = demo.run(args.data, preset=args.preset, seed=args.seed)
  acc = valid.confusion.accuracy
  print(f"demo: valid accuracy {acc:.3f} ({'ok' if acc >= 0.9 else 'below 0.9'})")
  return 0 if acc >= 0.9 else 1


if __name__ == "__main__":
  cli.run_main(main)
