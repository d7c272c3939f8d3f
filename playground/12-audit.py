#!/usr/bin/env python3
"""Duplicates and leaks: the same ad within and across sets, before training.

  ./12-audit.py -d set1                                 # dataset/set1/{train,valid,test}.jsonl
  ./12-audit.py -d cv5                                  # the folds' valid files, fold-1 ...
  ./12-audit.py train=a.jsonl valid=b.tsv extra=safe.jsonl [--embeddings --model M]
  ./12-audit.py --benchmark [--seeds 0-4]               # precision/recall on templated ads

Finds copies (same file content, sha256) and edited copies: pairs whose pHash
(of the image, its mirror and their centres) are within --hash-bits get a close
look, aligned for a mirror and a crop, block by block: the same shapes whatever
the colours (structure <= --duplicate, colour <= 0.10) is a duplicate; up to
--possible a possible duplicate; another product or other text on the same
template is neither. --embeddings adds the frozen vision encoder's view.
Duplicates form groups; a possible duplicate is shown pair by pair with the two
lines (confirm, dismiss) to copy into the decisions file (--decisions, default
dataset/audit-decisions.tsv), which this audit and 02-shuffle_data.py read.
Writes an HTML page with thumbnails (--html) and exits:
  0  no group of duplicates spans two sets (possible duplicates never fail)
  1  a leak: some group spans two sets (with --strict also any duplicate within
     a set and any group whose labels disagree)
  2  bad input (one line naming the file)
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import resolve
from palijudge.options import group, option
from palijudge.data.audit import AuditConfig


@dataclasses.dataclass(frozen=True)
class Config:
  files: tuple[str, ...] = option((), ".jsonl or .tsv sets (name: the file's name without "
                                  "suffix)", positional="*", metavar="[NAME=]FILE")
  split: str | None = option(None, "the split or folds 02 -n NAME wrote (dataset/NAME/; its "
                             "images: where 02 found them)", short="-d", metavar="NAME")
  root: str | None = cli.root_option()
  html: str | None = option(None, "the page of thumbnails (default: experiments/audit.html)",
                            suppress_default=True)
  strict: bool = option(False, "exit 1 on any duplicate or label conflict, not only on leaks "
                        "across sets")
  show: int = option(30, "print at most N groups (leaks first) and N possible pairs; the page "
                     "shows all", metavar="N")
  benchmark: bool = option(False, "instead: audit generated templated ads with planted edits "
                           "(seeded) and print precision and recall, before (the former "
                           "audit) and now")
  seeds: str = option("0-4", "--benchmark: the seeds, A-B or a comma list", metavar="A-B")
  audit: AuditConfig = group(AuditConfig, "duplicates (see palijudge.data.audit)")
  load: configs.LoadConfig = group(configs.LoadConfig, "model")


def _seeds(text: str) -> list:
  try:
    if "-" in text:
      a, b = (int(v) for v in text.split("-"))
      seeds = list(range(a, b + 1))
    else:
      seeds = [int(v) for v in text.split(",")]
  except ValueError:
    seeds = []
  if not seeds or min(seeds) < 0:
    raise cli.UserError(f"--seeds {text!r}: expected A-B (e.g. 0-4) or a comma list of seeds")
  return seeds


def benchmark(cfg) -> int:
  from palijudge.data import audit_bench
  if cfg.audit.embeddings:
    raise cli.UserError("--benchmark measures the checks without the encoder; drop --embeddings")
  for line in audit_bench.table(audit_bench.run(_seeds(cfg.seeds), cfg.audit), cfg.audit):
    print(line)
  return 0


def _named(specs, project) -> list:
  """[(name, path)] of NAME=FILE or FILE arguments; names default to the file's stem."""
  import os
  pairs = []
  for spec in specs:
    name, sep, path = spec.partition("=")
    if not sep or os.path.exists(spec):
      name, path = "", spec
    pairs.append((name.strip(), project.find(path.strip())))
  stems = [os.path.splitext(os.path.basename(p))[0] for _, p in pairs]
  return [(n or (s if stems.count(s) == 1 else p), p) for (n, p), s in zip(pairs, stems)]


def _split_files(name: str, project) -> list:
  """[(set name, path)] of dataset/NAME: the folds' valid files, or train/valid/test."""
  from palijudge import files
  from palijudge.data import splits
  folder = project.split(name, "-d")
  if (folder / splits.MANIFEST).is_file():
    return [(va.parent.name, va) for _, va in splits.fold_paths(folder)]
  found = [(s, folder / f"{s}.{ext}") for s in ("train", "valid", "test") for ext in ("jsonl", "tsv")
           if (folder / f"{s}.{ext}").is_file()]
  if not found:
    raise cli.UserError(f"{files.shown(folder)}: no train/valid/test .jsonl or .tsv files here")
  return found


def main(cfg, project):
  from palijudge import files
  from palijudge.evaluation import gallery
  from palijudge.data import audit_report
  if cfg.benchmark:
    return benchmark(cfg)
  named = (_split_files(cfg.split, project) if cfg.split else []) + _named(cfg.files, project)
  if cfg.show < 0:
    raise cli.UserError(f"--show {cfg.show}: expected 0 or more")
  if not named:
    raise cli.UserError("give dataset files ([NAME=]FILE ...) or -d NAME")
  names = [n for n, _ in named]
  if len(set(names)) != len(names):
    raise cli.UserError(f"set names repeat ({', '.join(names)}): name them, e.g. train=FILE")
  html = project.find(cfg.html) if cfg.html else str(project.experiments / "audit.html")
  files.check_writable(html, "--html page", [("a dataset", p) for _, p in named])
  r = resolve(cfg, project)
  sets = {n: r.read(p) for n, p in named}
  found = r.audit(sets, r.root(named[0][1]))
  for line in audit_report.report(found, limit=cfg.show):
    print(line)
  print(f"page: {files.shown(gallery.write_audit(html, found, 'Duplicate audit: ' + ', '.join(names)))}")
  bad = found.leaks or (cfg.strict and (found.groups or found.conflicts))
  return 1 if bad else 0


if __name__ == "__main__":
  cli.run(Config, main)
