#!/usr/bin/env python3
"""Train from any data file (the original 15-train.py): JSONL or TSV, images in -i.

  ./15-train.py -d tmp/noTp64.tsv -i dataset/pub_judges -t 8 -b 8 -r 0.001 -s checkpoints/x.npz
  ./15-train.py -d tmp/xaa -i dataset/pub_judges -l checkpoints/x.npz -s checkpoints/y.npz

One training stage on every row of -d (a .jsonl or .tsv file, or a file
without a suffix such as Unix `split`'s pieces, read by its content), image
paths relative to -i. -t N passes over the data: steps = ceil(rows / batch) x N
(--steps overrides it). -l continues from a checkpoint instead of the base
model; the new checkpoint records it as its parent (path and sha256). No
evaluation here: judge the result with 13-inference.py and 14-validate_outtsv.py.
The run is recorded under experiments/ (its log, loss plot and summary; a
resumed run continues its record), so it shows in 07-report.py's leaderboard.
--save-every K writes the train state beside -s every K steps; after a kill,
the same command with --resume continues from it to the same result.
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli

SHORT = {"batch_size": "-b", "lr": "-r"}  # The original script's short flags.


def flags():
  p = cli.parser(__doc__)
  p.add_argument("-d", "--data", required=True, help="training data (.jsonl, .tsv, or sniffed)")
  p.add_argument("-i", "--images", dest="root", default=None,
                 help="image folder relative paths resolve against (default: the data's folder)")
  p.add_argument("-s", "--save", required=True, metavar="CKPT",
                 help="checkpoint to write (.npz; a path, or a name under checkpoints/)")
  p.add_argument("-l", "--load", metavar="CKPT", default=None,
                 help="continue from this checkpoint (default: the base model, --model)")
  p.add_argument("-t", "--repeat", type=int, default=1, metavar="N",
                 help="passes over the data (default: 1)")
  p.add_argument("--resume", action="store_true",
                 help="continue from the train state a killed run left beside -s "
                      "(CKPT.state.npz, written every --save-every steps)")
  p.add_argument("--full", action="store_true",
                 help="save every parameter, not a delta over the base")
  p.add_argument("--experiments", default=None,
                 help="where the run record goes (default: the project's experiments/)")
  cli.add_model_flags(p)
  cli.add_eval_flags(p, skip=cli.eval_flags_except("prompt", "gif_frame"))
  cli.add_train_flags(p, aliases=SHORT, lottery=False)
  p.set_defaults(steps=None)
  return p


def main(args, project):
  import contextlib
  import dataclasses
  import math
  import os
  from palijudge import distributed, files, learn, train
  from palijudge.data import examples
  from palijudge.experiments import records
  if args.repeat < 1:
    raise cli.UserError(f"-t/--repeat must be >= 1, got {args.repeat}")
  save_to = cli.checkpoint_path(args.save, project, "-s")
  parent = project.find(args.load) if args.load else None
  given_steps = args.steps
  args.steps = 1 if given_steps is None else given_steps
  tcfg = cli.train_config(args)  # Every flag checked before the data sets the steps.
  data = project.find(args.data)
  rows = examples.read_examples(data, args.root and project.find(args.root))
  tcfg.check_data(len(rows), files.shown(data))
  if given_steps is None:
    steps = math.ceil(len(rows) / (tcfg.batch_size * tcfg.accum)) * args.repeat
    if steps > train.MAX_STEPS:
      raise cli.UserError(f"-t {args.repeat}: {steps} steps, more than {train.MAX_STEPS}")
    tcfg = dataclasses.replace(tcfg, steps=steps)
  inputs = cli.model_inputs(args, project, [parent] if parent else ()) + [("-d", data)]
  for path in (save_to, learn.state_path(save_to)):
    files.check_writable(path, "-s checkpoint", inputs)
  with files.lock(save_to, "checkpoint") if distributed.is_main() else contextlib.nullcontext():
    lm = cli.load_model(args, project, model=parent, trainable=tcfg.trainable, tcfg=tcfg)
    record = records.open_run(  # Process 0 alone writes it; a resumed run continues it.
        args.experiments or project.experiments, os.path.basename(save_to)[:-len(".npz")],
        {"command": records.command_line(), "args": vars(args),
         **learn.record_config(lm, tcfg, files.shown(data), save_to, parent=parent)},
        learn.resumed_checkpoint(save_to, args.resume)) if distributed.is_main() else None
    with record.running() if record else contextlib.nullcontext():
      learn.train_file(lm, rows, tcfg, cli.eval_config(args), save_to, parent=parent,
                       full=args.full, resume=args.resume, record=record)
    if record:
      print(f"record: {files.shown(record.path)}")


if __name__ == "__main__":
  cli.run(main, __file__, flags)
