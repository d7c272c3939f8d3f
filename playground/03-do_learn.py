#!/usr/bin/env python3
"""Evaluate, fine-tune and re-evaluate on dataset/SET/{train,valid}.jsonl.

  ./03-do_learn.py -d set1 -w trained-set1 [-2] [--model tiny] [--lr 0.03 ...]
  ./03-do_learn.py --cv cv5 [--cv-metric f_measure]   # every fold of dataset/cv5/

Evaluates all/train/valid before training, trains (the colab's recipe by
default), evaluates after, and saves checkpoints/NAME.npz (a delta over the
base unless --full). -2 adds a second stage at lr/10. Every run is recorded
under experiments/.
"""
from palijudge import cli
from palijudge.data import splits


def main():
  import dataclasses
  import os
  import shlex
  import sys
  from palijudge.experiments import cv as cv
  from palijudge.data import examples as data
  from palijudge.experiments import cv as experiment
  from palijudge.experiments import records as records
  from palijudge import learn as runner
  p = cli.parser(__doc__)
  p.add_argument("-d", "--dataset", help="split name under --root (dataset/SET)")
  p.add_argument("--cv", help="cross-validate over dataset/NAME/fold-*/ instead of -d")
  p.add_argument("--cv-metric", default="f_measure", choices=cv.METRICS)
  p.add_argument("-w", "--write", help="save checkpoints/NAME.npz after training")
  p.add_argument("-2", "--two-stage", action="store_true", help="second stage at lr/10")
  p.add_argument("--experiments", default="experiments", help="where run records go")
  cli.add_model_args(p)
  cli.add_eval_args(p)
  cli.add_loss_args(p)
  cli.add_train_args(p)
  args = p.parse_args()
  if (args.dataset is None) == (args.cv is None):
    raise cli.UserError("give either -d SET or --cv NAME")
  opts = cli.eval_options(args)
  honest = cli.report_options(args, strict=False)
  save_to = os.path.join("checkpoints", args.write + ".npz") if args.write else None
  if (args.resume or args.save_every) and not save_to:
    raise cli.UserError("--resume and --save-every need -w NAME (the state lives beside it)")
  folder = os.path.join(args.root, args.dataset or args.cv)
  if args.cv:
    folds = splits.fold_paths(folder)
    train_set = data.read_examples(folds[0][0], args.root)
  else:
    names = (os.path.join(folder, "all"), os.path.join(folder, "train.jsonl"),
             os.path.join(folder, "valid.jsonl"))
    train_set = data.read_examples(names[1], args.root)
    valid_set = data.read_examples(names[2], args.root)
  tcfg = cli.train_config(args, cli.loss_config(args, train_set))
  lm = cli.load_model(args, trainable=tcfg.trainable)
  record = records.RunRecord(args.experiments, args.write or args.cv or args.dataset)
  record.write_config({"command": shlex.join([sys.executable, *sys.argv]), "args": vars(args),
                       "train_config": dataclasses.asdict(tcfg), "model": lm.spec.name,
                       "weights": lm.spec.weights, "tokenizer": lm.spec.tokenizer})
  if args.cv:
    setup = runner.LearnSetup(names=("", "", ""), two_stage=args.two_stage, runs=args.runs,
                              select=args.select, honest=honest)
    experiment.cv_learn(lm, folds, tcfg, opts, setup, root=args.root, metric=args.cv_metric,
                        record=record)
    return
  setup = runner.LearnSetup(names=names, save_to=save_to, two_stage=args.two_stage,
                            resume=args.resume, runs=args.runs, select=args.select,
                            full=args.full, record=record, honest=honest,
                            extra_sets=cli.eval_sets(args, taken=names))
  runner.learn(lm, train_set, valid_set, tcfg, opts, setup)
  print(f"record: {record.path}")


if __name__ == "__main__":
  cli.run_main(main)
