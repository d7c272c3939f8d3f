#!/usr/bin/env python3
"""Batch inference: one prediction row per example, streamed, resumable.

  ./13-inference.py -l CKPT -d data.tsv -i IMAGE_DIR -b 4 > out.tsv
  ./13-inference.py -l CKPT -d data.tsv -i IMAGE_DIR -b 4 -o out.tsv   # resumable
  ./13-inference.py -l CKPT1,CKPT2,CKPT3 --ensemble mean -d data.tsv -o out.tsv
  ./13-inference.py -l checkpoints/x.probe.npz -d data.tsv -o out.tsv  # the linear probe

Rows: id, image, label, p_yes, pred, prefix (+ answer in decode mode), TSV
with a header or JSONL (by -o's suffix, or --format). With -o, rows go to
OUT.partial as they come and OUT appears only when complete; after an
interruption, the same command continues where it stopped (a partial file
left by another model, data or settings is refused: its first line proves
which wrote it). Several checkpoints (-l repeated or a comma list) judge as
an ensemble, as in 04-validate.py.
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import resolve
from palijudge.options import group, option
from palijudge.predictions import FORMATS


@dataclasses.dataclass(frozen=True)
class Config:
  data: str = option(None, "dataset (.tsv or .jsonl)", short="-d", required=True)
  root: str | None = cli.root_option("-i", "--images")
  judge: configs.JudgeConfig = group(configs.JudgeConfig, "which checkpoints judge",
                                     aliases={"checkpoint": "-l"})
  out: str | None = option(None, "prediction file (.tsv/.jsonl); default: stdout", short="-o",
                           suppress_default=True)
  format: str | None = option(None, "output format (default: by -o)", choices=FORMATS)
  overwrite: bool = option(False, "replace an existing OUT")
  no_progress: bool = option(False, "no progress bar on stderr")
  load: configs.LoadConfig = group(configs.LoadConfig, "model")
  eval: configs.EvalConfig = group(configs.EvalConfig, "evaluation", skip=(
      "pick_threshold", "target", "gallery", "gallery_max", "json"))


def main(cfg, project):
  import contextlib
  import sys
  from palijudge import files, infer, predictions
  r = resolve(cfg, project, log=lambda line: print(line, file=sys.stderr))
  ecfg = r.eval
  fmt = cfg.format or predictions.format_of(cfg.out)
  data = project.find(cfg.data)
  rows = r.read(data)
  predictions.check_values(rows, fmt)
  if cfg.out:
    infer.check_target(cfg.out, cfg.overwrite)
    inputs = r.inputs() + [("-d", data)]
    for path in (cfg.out, cfg.out + ".partial"):
      files.check_writable(path, "prediction file", inputs)
  with files.lock(cfg.out, "prediction file") if cfg.out else contextlib.nullcontext():
    judge = r.judge()
    source = infer.Source(model=judge.name, data=cfg.data, n_examples=len(rows),
                          model_id=judge.identity() if cfg.out else "",
                          data_id=infer.data_id(rows))
    res = infer.run(judge.lm, rows, cfg.out, source, ecfg, fmt=fmt, overwrite=cfg.overwrite,
                    progress=not cfg.no_progress, scorer=judge.scorer)
  if res.path:
    print(f"wrote {res.path}: {res.written + res.resumed} rows"
          f"{f' ({res.resumed} resumed)' if res.resumed else ''}")


if __name__ == "__main__":
  cli.run(Config, main)
