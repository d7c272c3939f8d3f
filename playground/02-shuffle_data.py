#!/usr/bin/env python3
"""Shuffle dataset/data.jsonl and split it into dataset/NAME/{train,valid}.jsonl.

  ./02-shuffle_data.py -v 10 -n set1 [--stratify] [--seed S]
  ./02-shuffle_data.py -v 10 -n set2 --data dataset/demo/data.jsonl --root dataset/demo
  ./02-shuffle_data.py --folds 5 -n cv5 [--stratify]   # dataset/cv5/fold-{1..5}/

Duplicates of one ad (the same file, or the same ad resized, re-encoded,
cropped, mirrored or recoloured: see 12-audit.py) stay on one side of the split,
and in one fold, and so do the pairs you confirmed in the decisions file
(--decisions, default dataset/audit-decisions.tsv); one line says how many
groups were kept together, and how many possible duplicates were not (12-audit.py
shows them to decide). A group may leave valid a little short of -v N. Without
duplicates the split is the same as without the check.
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import resolve
from palijudge.options import group, option
from palijudge.data.audit import AuditConfig


@dataclasses.dataclass(frozen=True)
class Config:
  valid: int | None = option(None, "number of validation examples", short="-v")
  folds: int | None = option(None, "write K cross-validation folds instead")
  name: str = option(None, "split name: writes dataset/NAME/ and its record, split.json (where "
                     "its images are), so -d NAME alone finds them", short="-n", required=True)
  data: str | None = option(None, "all examples (default: dataset/data.jsonl)",
                            suppress_default=True)
  root: str | None = cli.root_option()
  seed: int | None = option(None, "shuffle seed (default: random)")
  stratify: bool = option(False, "keep the yes/no ratio in valid")
  ignore_duplicates: bool = option(False, "split without looking for duplicates (they may land "
                                   "on both sides)")
  audit: AuditConfig = group(AuditConfig, "duplicates (see palijudge.data.audit)")
  load: configs.LoadConfig = group(configs.LoadConfig, "model")


def main(cfg, project):
  from palijudge import files
  if (cfg.valid is None) == (cfg.folds is None):
    raise cli.UserError("give either -v N or --folds K")
  data = project.find(cfg.data) if cfg.data else str(project.dataset / "data.jsonl")
  r = resolve(cfg, project)
  root = r.root(data)
  out = project.split(cfg.name, "-n")
  if files.is_within(data, out):  # The split is rebuilt from scratch: its files are outputs.
    raise cli.UserError(f"--data {files.shown(data)}: lies inside {files.shown(out)}, the split "
                        f"-n {cfg.name} rebuilds; split from a file outside it")
  with files.lock(out, "split"):
    _split(cfg, r, root, data, out)


def _split(cfg, r, root, data, out):
  import os
  from palijudge import files
  from palijudge.data import examples, splits
  seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
  rows = examples.read_examples(data, root)
  groups = None
  if not cfg.ignore_duplicates:
    found = r.audit({files.shown(data): rows}, root)
    print(found.kept_line())
    groups = found.group_ids() if found.groups else None
  if cfg.folds is not None:
    for tr, va in splits.write_folds(rows, cfg.folds, seed, cfg.stratify, out, groups):
      print(f"{files.shown(va.parent)}: train {len(examples.read_jsonl(tr, root))}, "
            f"valid {len(examples.read_jsonl(va, root))}")
    splits.write_record(out, root, data, seed, folds=cfg.folds)
    print(f"(seed {seed})")
    return
  train, valid = splits.split(rows, cfg.valid, seed, cfg.stratify, data_path=data,
                              groups=groups)
  for name in ("train.jsonl", "valid.jsonl"):
    files.check_writable(out / name, "split")
  examples.write_jsonl(out / "train.jsonl", train)
  examples.write_jsonl(out / "valid.jsonl", valid)
  splits.write_record(out, root, data, seed, train=len(train), valid=len(valid))
  print(f"{files.shown(out / 'train.jsonl')}: {len(train)} {splits.class_counts(train)}")
  print(f"{files.shown(out / 'valid.jsonl')}: {len(valid)} {splits.class_counts(valid)}  "
        f"(seed {seed})")


if __name__ == "__main__":
  cli.run(Config, main)
