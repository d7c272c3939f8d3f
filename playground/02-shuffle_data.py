#!/usr/bin/env python3
"""Shuffle dataset/data.jsonl and split it into dataset/NAME/{train,valid}.jsonl.

  ./02-shuffle_data.py -v 10 -n set1 [--stratify] [--seed S]
  ./02-shuffle_data.py --folds 5 -n cv5 [--stratify]   # dataset/cv5/fold-{1..5}/
"""
from palijudge import cli
from palijudge.data import splits


def main():
  import os
  from palijudge.data import examples as data
  p = cli.parser(__doc__)
  p.add_argument("-v", "--valid", type=int, help="number of validation examples")
  p.add_argument("--folds", type=int, help="write K cross-validation folds instead")
  p.add_argument("-n", "--name", required=True, help="split name: writes dataset/NAME/")
  p.add_argument("--data", default="dataset/data.jsonl", help="all examples (JSONL)")
  p.add_argument("--root", default="dataset", help="dataset root for relative image paths")
  p.add_argument("--seed", type=int, default=None, help="shuffle seed (default: random)")
  p.add_argument("--stratify", action="store_true", help="keep the yes/no ratio in valid")
  args = p.parse_args()
  seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
  if (args.valid is None) == (args.folds is None):
    raise cli.UserError("give either -v N or --folds K")
  examples = data.read_jsonl(args.data, args.root)
  if args.folds is not None:
    from palijudge.experiments import cv as cv
    out = os.path.join(args.root, args.name)
    for tr, va in splits.write_folds(examples, args.folds, seed, args.stratify, out):
      print(f"{va.parent}: train {len(data.read_jsonl(tr, args.root))}, "
            f"valid {len(data.read_jsonl(va, args.root))}")
    print(f"(seed {seed})")
    return
  train, valid = splits.split(examples, args.valid, seed, args.stratify, data_path=args.data)
  out = os.path.join(args.root, args.name)
  data.write_jsonl(os.path.join(out, "train.jsonl"), train)
  data.write_jsonl(os.path.join(out, "valid.jsonl"), valid)
  print(f"{out}/train.jsonl: {len(train)} {splits.class_counts(train)}")
  print(f"{out}/valid.jsonl: {len(valid)} {splits.class_counts(valid)}  (seed {seed})")


if __name__ == "__main__":
  cli.run_main(main)
