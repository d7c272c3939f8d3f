#!/usr/bin/env python3
"""Speed benchmark: one JSON line per measurement, ours against the colab's plain approach.

  ./08-bench.py [--steps 256] [--workdir cache/bench]
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  p = cli.parser(__doc__)
  p.add_argument("--steps", type=int, default=256,
                 help="training steps in the whole iteration (the users run 256)")
  p.add_argument("--workdir", default=None, help="generated model and data (default: cache/bench)")
  return p


def main(args, project):
  from palijudge.tools import bench
  bench.main(args.workdir or str(project.cache / "bench"), args.steps)


if __name__ == "__main__":
  cli.run(main, __file__, flags)
