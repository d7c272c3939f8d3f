#!/usr/bin/env python3
"""Train from any data file (the original 15-train.py): JSONL or TSV, images in -i.

  ./15-train.py -d tmp/noTp64.tsv -i dataset/pub_judges -t 8 -b 8 -r 0.001 -s checkpoints/x.npz
  ./15-train.py -d tmp/xaa -i dataset/pub_judges -l checkpoints/x.npz -s checkpoints/y.npz

One training stage on every row of -d (a .jsonl or .tsv file, a TSV with or
without a header as 16-filter_train_data.py writes it, or a file without a
suffix such as Unix `split`'s pieces, read by its content), image paths
relative to -i. -t N passes over the data: steps = ceil(rows / batch) x N
(--steps overrides it). -l continues from a checkpoint instead of the base
model; the new checkpoint records it as its parent (path and sha256). No
evaluation here: judge the result with 13-inference.py and 14-validate_outtsv.py.
The run is recorded under experiments/ (its log, loss plot and summary; a
resumed run continues its record), so it shows in 07-report.py's leaderboard.
--save-every K writes the train state beside -s every K steps; after a kill,
the same command with --resume continues from it to the same result.
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import Save, resolve
from palijudge.options import group, option


@dataclasses.dataclass(frozen=True)
class Config:
  data: str = option(None, "training data (.jsonl, .tsv, or sniffed)", short="-d",
                     required=True)
  root: str | None = cli.root_option("-i", "--images")
  save: str = option(None, "checkpoint to write (.npz; a path, or a name under checkpoints/)",
                     short="-s", required=True, metavar="CKPT")
  load_from: str | None = option(None, "continue from this checkpoint (default: the base "
                                 "model, --model)", flag="--load", short="-l", metavar="CKPT",
                                 suppress_default=True)
  repeat: int = option(1, "passes over the data", short="-t", metavar="N")
  steps: int | None = option(None, "optimizer steps (default: one pass over the data per "
                             "--repeat: ceil(examples / (batch x accum)) x N)",
                             suppress_default=True)
  resume: bool = option(False, "continue from the train state a killed run left beside -s "
                        "(CKPT.state.npz, written every --save-every steps)")
  full: bool = option(False, "save every parameter, not a delta over the base")
  experiments: str | None = option(None, "where the run record goes (default: the project's "
                                   "experiments/)", suppress_default=True)
  load: configs.LoadConfig = group(configs.LoadConfig, "model")
  eval: configs.EvalConfig = group(configs.EvalConfig, "evaluation",
                                   skip=cli.eval_except("prompt", "gif_frame"))
  # The original script's short flags: -b for --batch, -r for --lr.
  train: configs.TrainConfig = group(configs.TrainConfig, "training", skip=("steps",),
                                     aliases={"batch_size": "-b", "lr": "-r"})


def main(cfg, project):
  import contextlib
  import dataclasses
  import math
  import os
  from palijudge import distributed, files, learn, options
  from palijudge.experiments import records
  if cfg.repeat < 1:
    raise cli.UserError(f"-t/--repeat must be >= 1, got {cfg.repeat}")
  r = resolve(cfg, project, [cfg.load_from], judges=False, save=Save("-s", cfg.save, True))
  save_to, parent = r.save_to, (r.models[0] if r.models else None)
  tcfg = cfg.train if cfg.steps is None else dataclasses.replace(cfg.train, steps=cfg.steps)
  data = project.find(cfg.data)
  rows = r.read(data)
  tcfg.check_data(len(rows), files.shown(data))
  if cfg.steps is None:
    steps = math.ceil(len(rows) / (tcfg.batch_size * tcfg.accum)) * cfg.repeat
    if steps > configs.MAX_STEPS:
      raise cli.UserError(f"-t {cfg.repeat}: {steps} steps, more than {configs.MAX_STEPS}")
    tcfg = dataclasses.replace(tcfg, steps=steps)
  inputs = r.inputs() + [("-d", data)]
  for path in (save_to, learn.state_path(save_to)):
    files.check_writable(path, "-s checkpoint", inputs)
  with files.lock(save_to, "checkpoint") if distributed.is_main() else contextlib.nullcontext():
    lm = r.load(tcfg.trainable, tcfg)
    record = records.open_run(  # Process 0 alone writes it; a resumed run continues it.
        cfg.experiments or project.experiments, os.path.basename(save_to)[:-len(".npz")],
        {"command": records.command_line(), "args": options.flat(cfg),
         **learn.record_config(lm, tcfg, files.shown(data), save_to, parent=parent)},
        learn.resumed_checkpoint(save_to, cfg.resume)) if distributed.is_main() else None
    with record.running() if record else contextlib.nullcontext():
      learn.train_file(lm, rows, tcfg, r.eval, save_to, parent=parent,
                       full=cfg.full, resume=cfg.resume, record=record)
    if record:
      print(f"record: {files.shown(record.path)}")


if __name__ == "__main__":
  cli.run(Config, main)
