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
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import Save, resolve
from palijudge.options import group, option


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str | None = option(None, "split name: dataset/SET/{train,valid}.jsonl, as 02 -n SET "
                               "wrote it (its images: where 02 found them)", short="-d")
  cv: str | None = option(None, "cross-validate over dataset/NAME/fold-*/ instead of -d")
  cv_metric: str = option("f_measure", "metric of the CV score", choices=configs.CV_METRICS)
  write: str | None = option(None, "save checkpoints/NAME.npz after training", short="-w")
  phases: bool = option(False, "time each phase (load, compilation, evaluations, training, "
                        "save) and print a table and one JSON line at the end")
  experiments: str | None = option(None, "where run records go (default: the project's "
                                   "experiments/)", suppress_default=True)
  record: str | None = option(None, "write the run record into this existing folder (the trial "
                              "folder `06-tune.py ask` made) instead of a new one",
                              metavar="DIR")
  root: str | None = cli.root_option()
  load: configs.LoadConfig = group(configs.LoadConfig, "model")
  eval: configs.EvalConfig = group(configs.EvalConfig, "evaluation")
  eval_set: tuple[str, ...] = cli.eval_set_option()
  train: configs.TrainConfig = group(configs.TrainConfig, "training")
  learn: configs.LearnConfig = group(configs.LearnConfig, "stages and the lottery")


def main(cfg, project):
  import contextlib
  from palijudge import distributed, files, learn
  from palijudge.data import examples, splits
  if (cfg.dataset is None) == (cfg.cv is None):
    raise cli.UserError("give either -d SET or --cv NAME")
  r = resolve(cfg, project, judges=False, save=Save("-w", cfg.write))
  lcfg, tcfg, save_to = cfg.learn, cfg.train, r.save_to
  if cfg.cv and (lcfg.probe_only or lcfg.keep == "all"):
    raise cli.UserError("--probe-only and --keep all work with -d SET, not --cv")
  if (lcfg.resume or tcfg.save_every) and not save_to:
    raise cli.UserError("--resume and --save-every need -w NAME (the state lives beside it)")
  folder = project.split(cfg.dataset or cfg.cv, "-d" if cfg.dataset else "--cv")
  root = r.root(folder)
  if cfg.cv:
    folds = splits.fold_paths(folder)
    train_sets = [examples.read_examples(tr, root) for tr, _ in folds]
    split = (train_sets[0], None, None)
  else:
    names = tuple(files.shown(folder / n) for n in ("all", "train.jsonl", "valid.jsonl"))
    train_sets = [examples.read_examples(names[1], root)]
    split = (train_sets[0], examples.read_examples(names[2], root), names)
  if cfg.record:  # The trial folder must be one, before any work.
    from palijudge.experiments import records
    records.RunRecord.load(project.find(cfg.record))
  smallest = min(train_sets, key=len)  # Every numeric flag against the data, before any work.
  tcfg.check_data(len(smallest), files.shown(smallest[0].source))
  if save_to:  # What this run writes may not be what it reads.
    inputs = r.inputs() + [("the data file", e[0].source) for e in split[:2] if e]
    for path in learn.outputs_of(save_to, lcfg):
      files.check_writable(path, "-w checkpoint", inputs)
  with files.lock(save_to, "checkpoint") if save_to and distributed.is_main() \
      else contextlib.nullcontext():  # No other run writes NAME meanwhile.
    _learn(cfg, r, root, folder, split, folds if cfg.cv else None)


def _learn(cfg, r, root, folder, split, folds):
  """Loads the model, trains (or cross-validates) and records the run."""
  import contextlib
  from palijudge import distributed, files, learn, options, phases as phases_lib
  from palijudge.experiments import cv, records
  train_set, valid_set, names = split
  tcfg, lcfg, ecfg, save_to, project = cfg.train, cfg.learn, r.eval, r.save_to, r.project
  phases = phases_lib.Phases() if cfg.phases else None
  with phases("checkpoint_load") if phases else contextlib.nullcontext():
    lm = r.load(tcfg.trainable, tcfg)
  record = None
  if distributed.is_main():  # Process 0 alone writes the run record.
    config = {"command": records.command_line(), "args": options.flat(cfg),
              **learn.record_config(lm, tcfg, files.shown(folder), save_to)}
    if cfg.record:
      record = records.RunRecord.load(project.find(cfg.record))
      record.write_config(config, merge=True)
    else:  # A resumed run continues the killed run's record.
      record = records.open_run(cfg.experiments or project.experiments,
                                cfg.write or cfg.cv or cfg.dataset, config,
                                learn.resumed_checkpoint(save_to, lcfg.resume))
  with record.running() if record else contextlib.nullcontext():
    if folds:
      cv.cv_learn(lm, folds, tcfg, ecfg, lcfg, root=root, metric=cfg.cv_metric, record=record)
      return
    learn.learn(lm, train_set, valid_set, tcfg, ecfg, lcfg, names=names, save_to=save_to,
                record=record, extra_sets=r.eval_sets(taken=names),
                phases=phases)
  if record:
    print(f"record: {files.shown(record.path)}")
  if phases:
    print(phases.table())
    print(phases.json_line(model=lm.spec.name, steps=tcfg.steps, batch=tcfg.batch_size))


if __name__ == "__main__":
  cli.run(Config, main)
