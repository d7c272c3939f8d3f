#!/usr/bin/env python3
"""Speed benchmark: one JSON line per measurement, ours against the colab's plain approach.

  ./08-bench.py [--steps 256] [--workdir cache/bench]
"""
from palijudge import cli


def main():
  from palijudge.tools import bench as bench
  p = cli.parser(__doc__)
  p.add_argument("--steps", type=int, default=256,
                 help="training steps in the whole iteration (the users run 256)")
  p.add_argument("--workdir", default="cache/bench", help="generated model and data")
  args = p.parse_args()
  bench.main(args.workdir, args.steps)


if __name__ == "__main__":
  cli.run_main(main)
