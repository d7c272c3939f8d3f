#!/usr/bin/env python3
"""Evaluate, fine-tune and re-evaluate on dataset/SET/{train,valid}.jsonl.

  ./03-do_learn.py -d set1 -w trained-set1 [-2] [--model tiny] [--lr 0.03 ...]

Evaluates all/train/valid before training, trains (the colab's recipe by
default), evaluates after, and saves checkpoints/NAME.npz. -2 adds a second
stage at lr/10.
"""
from palijudge import cli


def main():
  import os
  from palijudge import data, losses, runner, train
  p = cli.parser(__doc__)
  p.add_argument("-d", "--dataset", required=True, help="split name under --root (dataset/SET)")
  p.add_argument("-w", "--write", help="save checkpoints/NAME.npz after training")
  p.add_argument("-2", "--two-stage", action="store_true", help="second stage at lr/10")
  cli.add_model_args(p)
  cli.add_eval_args(p)
  d = train.TrainConfig()
  g = p.add_argument_group("training")
  g.add_argument("--lr", type=float, default=d.lr)
  g.add_argument("--batch", type=int, default=d.batch_size)
  g.add_argument("--steps", type=int, default=d.steps)
  g.add_argument("--seed", type=int, default=d.seed)
  g.add_argument("--trainable", default=d.trainable, choices=sorted(train.TRAINABLE))
  g.add_argument("--optimizer", default=d.optimizer, choices=train.OPTIMIZERS)
  g.add_argument("--loss", default=d.loss.kind, choices=losses.LOSSES)
  g.add_argument("--print-every", type=int, default=d.print_every)
  g.add_argument("--accum", type=int, default=d.accum,
                 help="gradient accumulation: effective batch = batch x accum")
  g.add_argument("--remat", default=d.remat, choices=train.REMAT_POLICIES,
                 help="rematerialise the scanned layers (saves activation memory)")
  g.add_argument("--fsdp", action="store_true", help="shard params over all devices")
  g.add_argument("--flip", action="store_true", help="augment: random left-right mirror")
  g.add_argument("--lora-rank", type=int, default=d.lora_rank,
                 help="adapter rank with --trainable lora")
  g = p.add_argument_group("the lottery")
  g.add_argument("--max-restarts", type=int, default=d.max_restarts,
                 help="on divergence, restart with the next seed up to this many times")
  g.add_argument("--diverge-loss", type=float, default=d.diverge_loss,
                 help="divergence: mean loss of 16 steps rises above this after warm-up")
  g.add_argument("--save-every", type=int, default=d.save_every,
                 help="write the train state every N steps (for --resume)")
  g.add_argument("--runs", type=int, default=1,
                 help="independent runs (seeds S, S+1000, ...); the best is saved")
  g.add_argument("--select", default="f1", choices=runner.SELECT,
                 help="validation metric that picks the best run")
  g.add_argument("--full", action="store_true",
                 help="save every parameter (big_vision-loadable), not a delta over the base")
  g.add_argument("--resume", action="store_true",
                 help="continue from checkpoints/NAME.state.npz if a killed run left one")
  args = p.parse_args()
  tcfg = train.TrainConfig(lr=args.lr, batch_size=args.batch, steps=args.steps, seed=args.seed,
                           trainable=args.trainable, optimizer=args.optimizer,
                           loss=losses.LossConfig(kind=args.loss),
                           print_every=args.print_every, accum=args.accum, remat=args.remat,
                           fsdp=args.fsdp, flip=args.flip, max_restarts=args.max_restarts,
                           diverge_loss=args.diverge_loss, save_every=args.save_every,
                           lora_rank=args.lora_rank)
  opts = cli.eval_options(args)
  folder = os.path.join(args.root, args.dataset)
  names = (os.path.join(folder, "all"), os.path.join(folder, "train.jsonl"),
           os.path.join(folder, "valid.jsonl"))
  train_set = data.read_jsonl(names[1], args.root)
  valid_set = data.read_jsonl(names[2], args.root)
  lm = cli.load_model(args, trainable=tcfg.trainable)
  save_to = os.path.join("checkpoints", args.write + ".npz") if args.write else None
  if args.runs < 1:
    raise cli.UserError("--runs must be >= 1")
  if (args.resume or args.save_every) and not save_to:
    raise cli.UserError("--resume and --save-every need -w NAME (the state lives beside it)")
  setup = runner.LearnSetup(names=names, save_to=save_to, two_stage=args.two_stage,
                            resume=args.resume, runs=args.runs, select=args.select,
                            full=args.full)
  runner.learn(lm, train_set, valid_set, tcfg, opts, setup)


if __name__ == "__main__":
  cli.run_main(main)
