#!/usr/bin/env python3
"""Evaluate, fine-tune and re-evaluate on dataset/SET/{train,valid}.jsonl.

  ./03-do_learn.py -d set1 -w trained-set1 [-2] [--model tiny] [--lr 0.03 ...]
  ./03-do_learn.py --cv cv5 [--cv-metric f_measure]   # every fold of dataset/cv5/
  ./03-do_learn.py -d set1 -w trained-set1 --probe       # + the linear probe's blocks
  ./03-do_learn.py -d set1 -w probe-set1 --probe-only    # the probe alone, in seconds
  ./03-do_learn.py -d set1 -w x --runs 5 --keep all      # x.npz (best) + x.run1..5.npz

Evaluates all/train/valid before training, trains (the colab's recipe by
default), evaluates after, and saves checkpoints/NAME.npz (a delta over the
base unless --full). -2 adds a second stage at lr/10. --probe fits a
logistic regression on the frozen encoder's image embeddings of the train
split and prints its Result blocks, tagged (probe), beside the fine-tune's
(saved as checkpoints/NAME.probe.npz). Every run is recorded under experiments/.
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  from palijudge.experiments import cv
  p = cli.parser(__doc__)
  p.add_argument("-d", "--dataset", help="split name: dataset/SET/{train,valid}.jsonl, as "
                                          "02 -n SET wrote it (its images: where 02 found them)")
  p.add_argument("--cv", help="cross-validate over dataset/NAME/fold-*/ instead of -d")
  p.add_argument("--cv-metric", default="f_measure", choices=cv.METRICS,
                 help="metric of the CV score")
  p.add_argument("-w", "--write", help="save checkpoints/NAME.npz after training")
  p.add_argument("--phases", action="store_true",
                 help="time each phase (load, compilation, evaluations, training, save) and "
                      "print a table and one JSON line at the end")
  p.add_argument("--experiments", default=None,
                 help="where run records go (default: the project's experiments/)")
  p.add_argument("--record", default=None, metavar="DIR",
                 help="write the run record into this existing folder (the trial folder "
                      "`06-tune.py ask` made) instead of a new one")
  cli.add_root_flag(p)
  cli.add_model_flags(p)
  cli.add_eval_flags(p)
  cli.add_train_flags(p)
  return p


def main(args, project):
  import contextlib
  from palijudge import distributed, files, learn, options
  from palijudge.data import examples, splits
  if (args.dataset is None) == (args.cv is None):
    raise cli.UserError("give either -d SET or --cv NAME")
  ecfg = cli.eval_config(args)
  lcfg = options.build(learn.LearnConfig, args)
  save_to = str(files.inside(args.write + ".npz", project.checkpoints, "-w")) \
      if args.write else None
  if args.cv and (lcfg.probe_only or lcfg.keep == "all"):
    raise cli.UserError("--probe-only and --keep all work with -d SET, not --cv")
  if (lcfg.resume or args.save_every) and not save_to:
    raise cli.UserError("--resume and --save-every need -w NAME (the state lives beside it)")
  folder = project.split(args.dataset or args.cv, "-d" if args.dataset else "--cv")
  root = cli.data_root(args, project, folder)
  if args.cv:
    folds = splits.fold_paths(folder)
    train_sets = [examples.read_examples(tr, root) for tr, _ in folds]
    split = (train_sets[0], None, None)
  else:
    names = tuple(files.shown(folder / n) for n in ("all", "train.jsonl", "valid.jsonl"))
    train_sets = [examples.read_examples(names[1], root)]
    split = (train_sets[0], examples.read_examples(names[2], root), names)
  if args.record:  # The trial folder must be one, before any work.
    from palijudge.experiments import records
    records.RunRecord.load(project.find(args.record))
  tcfg = cli.train_config(args)
  smallest = min(train_sets, key=len)  # Every numeric flag against the data, before any work.
  tcfg.check_data(len(smallest), files.shown(smallest[0].source))
  if save_to:  # What this run writes may not be what it reads.
    inputs = cli.model_inputs(args, project) + [("the data file", e[0].source)
                                                for e in split[:2] if e]
    for path in learn.outputs_of(save_to, lcfg):
      files.check_writable(path, "-w checkpoint", inputs)
  with files.lock(save_to, "checkpoint") if save_to and distributed.is_main() \
      else contextlib.nullcontext():  # No other run writes NAME meanwhile.
    _learn(args, project, root, folder, tcfg, ecfg, lcfg, save_to, split,
           folds if args.cv else None)


def _learn(args, project, root, folder, tcfg, ecfg, lcfg, save_to, split, folds):
  """Loads the model, trains (or cross-validates) and records the run."""
  import contextlib
  from palijudge import distributed, files, learn, phases as phases_lib
  from palijudge.experiments import cv, records
  train_set, valid_set, names = split
  phases = phases_lib.Phases() if args.phases else None
  with phases("checkpoint_load") if phases else contextlib.nullcontext():
    lm = cli.load_model(args, project, trainable=tcfg.trainable, tcfg=tcfg)
  record = None
  if distributed.is_main():  # Process 0 alone writes the run record.
    config = {"command": records.command_line(), "args": vars(args),
              **learn.record_config(lm, tcfg, files.shown(folder), save_to)}
    if args.record:
      record = records.RunRecord.load(project.find(args.record))
      record.write_config(config, merge=True)
    else:  # A resumed run continues the killed run's record.
      record = records.open_run(args.experiments or project.experiments,
                                args.write or args.cv or args.dataset, config,
                                learn.resumed_checkpoint(save_to, lcfg.resume))
  with record.running() if record else contextlib.nullcontext():
    if folds:
      cv.cv_learn(lm, folds, tcfg, ecfg, lcfg, root=root, metric=args.cv_metric, record=record)
      return
    learn.learn(lm, train_set, valid_set, tcfg, ecfg, lcfg, names=names, save_to=save_to,
                record=record, extra_sets=cli.eval_sets(args, project, taken=names), phases=phases)
  if record:
    print(f"record: {files.shown(record.path)}")
  if phases:
    print(phases.table())
    print(phases.json_line(model=lm.spec.name, steps=tcfg.steps, batch=tcfg.batch_size))


if __name__ == "__main__":
  cli.run(main, __file__, flags)
