"""Shared command-line plumbing for the numbered scripts.

`run_main` turns a `UserError` into one line on stderr and exit status 2, so
bad input never shows a traceback. Importing this module sets the users'
GPU memory settings (no XLA preallocation, platform allocator) unless the
environment already chooses otherwise; it must be imported before jax runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from palijudge.errors import UserError  # noqa: E402
from palijudge import params as params_lib
from palijudge.data import splits


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # One line, exit 2, like every other bad input.
    print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def parser(description: str) -> argparse.ArgumentParser:
  return _Parser(description=description,
                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def _maybe_distributed() -> None:
  """Multi-host: join the cluster before any jax work (PALIJUDGE_DISTRIBUTED=1).

  Every process loads the same global batches (the order is a function of
  the seed); jit's shardings then keep each host's share on its devices.
  """
  if os.environ.get("PALIJUDGE_DISTRIBUTED") != "1":
    return
  import jax
  try:
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  except KeyError as e:
    raise UserError(f"PALIJUDGE_DISTRIBUTED=1 needs the environment variable {e.args[0]}") from None


def run_main(main: Callable[[], int | None]) -> None:
  try:
    _maybe_distributed()
    code = main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
  sys.exit(code or 0)


def add_model_args(p: argparse.ArgumentParser, default_model: str | None = None) -> None:
  from palijudge import loader as session
  g = p.add_argument_group("model")
  g.add_argument("--model", default=default_model or session.DEFAULT_MODEL,
                 help="preset name (weights from cache/) or checkpoint .npz")
  g.add_argument("--model-config", help="model config JSON (for checkpoints without one)")
  g.add_argument("--tokenizer", help="sentencepiece model (default: next to the weights)")
  g.add_argument("--base", help="base checkpoint of a delta checkpoint (default: as recorded)")
  g.add_argument("--prompt", default=session.DEFAULT_PROMPT,
                 help="prompt used where a row's prefix is empty")
  g.add_argument("--param-dtype", default="auto", choices=session.PARAM_DTYPES,
                 help="dtype of frozen params (auto: as stored in the checkpoint)")
  g.add_argument("--compute-dtype", default="auto",
                 choices=("auto", "float32", "bfloat16", "float16"),
                 help="activation dtype (auto: bfloat16 on GPU, float32 on CPU)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
  from palijudge import evaluate
  from palijudge.data import images as images
  g = p.add_argument_group("evaluation")
  g.add_argument("--mode", default="score", choices=evaluate.MODES,
                 help="score: p(yes) from one forward pass; decode: greedy answer")
  g.add_argument("--eval-batch", type=int, default=8, help="evaluation batch size")
  g.add_argument("--threshold", type=float, default=None,
                 help="predict yes when p(yes) >= this (default: the threshold stored in "
                      "the checkpoint, else 0.5)")
  g.add_argument("--pick-threshold", metavar="SET",
                 help="choose the threshold on this evaluated set (a file name, its stem "
                      "such as valid, or an --eval-set name) and apply it to every set")
  g.add_argument("--target", default=None,
                 help="what --pick-threshold aims for: f1, precision=P or recall=R (default f1)")
  g.add_argument("--gif-frame", default="first", choices=images.GIF_POLICIES,
                 help="which frame of an animated image to judge; all: score every frame "
                      "and combine p(yes) by --gif-combine")
  g.add_argument("--gif-frames", type=int, default=None, metavar="K",
                 help="with --gif-frame all: K evenly spaced frames (default 0 = every frame)")
  g.add_argument("--gif-combine", default=None, choices=images.GIF_COMBINE,
                 help="with --gif-frame all: combine the frames' p(yes) (default mean)")
  g.add_argument("--eval-set", action="append", default=[], metavar="NAME=FILE",
                 help="extra evaluation set (.jsonl or .tsv), repeatable")
  g.add_argument("--gallery", metavar="DIR",
                 help="write an HTML error gallery (FP and FN thumbnails) per set to DIR")
  g.add_argument("--gallery-max", type=int, default=200,
                 help="thumbnails per gallery section")
  g.add_argument("--json", action="store_true", help="also print one JSON line per file")
  g.add_argument("--root", default="dataset",
                 help="dataset root: relative image paths are resolved against it")


def _eval_conflicts(args) -> list[str]:
  """Contradictory evaluation flags, as messages."""
  out = []
  get = lambda name: getattr(args, name, None)
  if get("threshold") is not None and get("pick_threshold"):
    out.append("--threshold and --pick-threshold contradict each other: give one")
  if get("mode") == "decode":
    for flag in ("threshold", "pick_threshold"):
      if get(flag) is not None:
        out.append(f"--{flag.replace('_', '-')} needs --mode score (decode predicts from "
                   f"the answer text)")
    if get("gif_frame") == "all":
      out.append("--gif-frame all combines p(yes) over frames and needs --mode score")
  if get("target") is not None and not get("pick_threshold"):
    out.append("--target needs --pick-threshold SET")
  if (get("gif_frames") is not None or get("gif_combine") is not None) \
      and get("gif_frame") != "all":
    out.append("--gif-frames/--gif-combine need --gif-frame all")
  return out


def eval_options(args, stored_threshold: float | None = None):
  """EvalOptions from the evaluation flags; contradictions are refused.

  The threshold is --threshold, else `stored_threshold` (a checkpoint's), else 0.5.
  """
  from palijudge.learn import EvalOptions
  for msg in _eval_conflicts(args):
    raise UserError(msg)
  threshold = args.threshold if args.threshold is not None else stored_threshold
  threshold = 0.5 if threshold is None else float(threshold)
  if not 0 < threshold < 1:
    raise UserError(f"--threshold must be in (0, 1), got {threshold}")
  if args.eval_batch < 1:
    raise UserError("--eval-batch must be >= 1")
  return EvalOptions(prompt=args.prompt, mode=args.mode, batch_size=args.eval_batch,
                     threshold=threshold, gif_frame=args.gif_frame, as_json=args.json)


def load_model(args, model: str | None = None, trainable: str = "attn"):
  from palijudge import loader as session
  spec = session.resolve(model or args.model, args.model_config, args.tokenizer,
                         base=getattr(args, "base", None))
  return session.load(spec, trainable=trainable, param_dtype=args.param_dtype,
                      compute=args.compute_dtype)


def report_options(args, strict: bool = True):
  """reporting.ReportOptions from the evaluation flags (call after eval_options).

  strict=False: a --target no threshold reaches warns and uses the best reachable
  threshold instead of stopping (for reports in the middle of a training run).
  """
  from palijudge import thresholds
  from palijudge import evaluate as reporting
  frames = getattr(args, "gif_frames", None) or 0
  if frames < 0:
    raise UserError(f"--gif-frames must be >= 0, got {frames}")
  if getattr(args, "gallery_max", 200) < 1:
    raise UserError("--gallery-max must be >= 1")
  target = getattr(args, "target", None)
  return reporting.ReportOptions(
      pick_split=getattr(args, "pick_threshold", None),
      target=thresholds.parse_target(target) if target else thresholds.Target("f1"),
      strict_target=strict, frames=frames, combine=getattr(args, "gif_combine", None) or "mean",
      gallery_dir=getattr(args, "gallery", None), gallery_limit=getattr(args, "gallery_max", 200))


def eval_sets(args, taken: Sequence[str] = ()) -> dict:
  """{NAME: examples} of every --eval-set NAME=FILE (read with data.read_examples)."""
  from palijudge.data import examples as data
  out: dict = {}
  for spec in getattr(args, "eval_set", None) or []:
    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
      raise UserError(f"--eval-set {spec!r}: expected NAME=FILE, e.g. safe=dataset/safe.jsonl")
    if name in out or name in taken:
      raise UserError(f"--eval-set {name}: the name is already used; pick another")
    out[name] = data.read_examples(path, args.root)
  return out


def stored_threshold(model: str | None) -> float | None:
  """The decision threshold saved in a checkpoint's meta ("threshold"), if any."""
  import os
  from palijudge import checkpoint
  if not model or not model.endswith(".npz") or not os.path.isfile(model):
    return None
  value = checkpoint.read_meta(model).get("threshold")
  return float(value) if isinstance(value, (int, float)) else None


def add_loss_args(p: argparse.ArgumentParser) -> None:
  """--loss and its parameters (defaults None: flags given for another loss are refused)."""
  from palijudge import losses
  g = p.add_argument_group("objective (see palijudge.losses)")
  g.add_argument("--loss", default=None, choices=losses.LOSSES, help="default ce (the colab's)")
  g.add_argument("--pos-weight", type=float, help="bce/focal/combined: weight of yes terms")
  g.add_argument("--focal-alpha", type=float, help="focal/combined: scale of the focal term, "
                 "both classes alike (default 1: none)")
  g.add_argument("--focal-gamma", type=float, help="focal/combined: focusing (default 3)")
  g.add_argument("--bce-weight", type=float, help="combined: weight of bce (default 0.5)")
  g.add_argument("--focal-weight", type=float, help="combined: weight of focal (default 0.5)")
  g.add_argument("--label-smoothing", type=float, help="target smoothing eps (default 0)")
  g.add_argument("--class-weight", metavar="auto|W_YES,W_NO",
                 help="per-class loss weights; auto = inverse class frequency of the "
                      "training split")


_LOSS_FLAGS = {"pos_weight": ("bce", "focal", "combined"), "focal_alpha": ("focal", "combined"),
               "focal_gamma": ("focal", "combined"), "bce_weight": ("combined",),
               "focal_weight": ("combined",)}


def loss_config(args, train_examples: Sequence):
  """LossConfig from the flags; `auto` class weights come from the training split."""
  from palijudge import losses
  kind = args.loss or "ce"
  kw = {}
  for flag, kinds in _LOSS_FLAGS.items():
    value = getattr(args, flag, None)
    if value is not None:
      if kind not in kinds:
        raise UserError(f"--{flag.replace('_', '-')} applies to --loss {'/'.join(kinds)}, "
                        f"not {kind}")
      kw[flag] = value
  if getattr(args, "label_smoothing", None) is not None:
    kw["label_smoothing"] = args.label_smoothing
  cw = getattr(args, "class_weight", None)
  if cw is not None:
    if cw.strip().lower() == "auto":
      counts = splits.class_counts(train_examples)
      kw["class_weight"] = losses.balanced_class_weight(counts["yes"], counts["no"])
    else:
      kw["class_weight"] = _two_floats(cw)
  return losses.LossConfig(kind=kind, **kw)


def _two_floats(text: str) -> tuple[float, float]:
  parts = text.split(",")
  try:
    values = tuple(float(x) for x in parts)
  except ValueError:
    values = ()
  if len(values) != 2:
    raise UserError(f"--class-weight must be auto or W_YES,W_NO (two numbers), got {text!r}")
  return values


def resolving_parser(description: str) -> argparse.ArgumentParser:
  """`parser` whose later options replace earlier ones of the same name."""
  return _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                 conflict_handler="resolve")


def add_train_args(p: argparse.ArgumentParser) -> None:
  """The recipe (defaults = the colab's), the lottery and memory flags of 03."""
  from palijudge import train
  from palijudge import learn as runner
  d = train.TrainConfig()
  g = p.add_argument_group("training")
  g.add_argument("--lr", type=float, default=d.lr)
  g.add_argument("--batch", type=int, default=d.batch_size)
  g.add_argument("--steps", type=int, default=d.steps)
  g.add_argument("--seed", type=int, default=d.seed)
  g.add_argument("--trainable", default=d.trainable, choices=sorted(params_lib.TRAINABLE))
  g.add_argument("--optimizer", default=d.optimizer, choices=train.OPTIMIZERS)
  g.add_argument("--print-every", type=int, default=d.print_every)
  g.add_argument("--accum", type=int, default=d.accum,
                 help="gradient accumulation: effective batch = batch x accum")
  g.add_argument("--remat", default=d.remat, choices=train.REMAT_POLICIES,
                 help="what the decoder layers keep for the backward pass (full: nothing)")
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


def train_config(args, loss):
  from palijudge import train
  if args.runs < 1:
    raise UserError("--runs must be >= 1")
  return train.TrainConfig(
      lr=args.lr, batch_size=args.batch, steps=args.steps, seed=args.seed,
      trainable=args.trainable, optimizer=args.optimizer, loss=loss,
      print_every=args.print_every, accum=args.accum, remat=args.remat, fsdp=args.fsdp,
      flip=args.flip, max_restarts=args.max_restarts, diverge_loss=args.diverge_loss,
      save_every=args.save_every, lora_rank=args.lora_rank)
