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
from typing import Callable

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from palijudge.errors import UserError  # noqa: E402


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # One line, exit 2, like every other bad input.
    print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def parser(description: str) -> argparse.ArgumentParser:
  return _Parser(description=description,
                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def run_main(main: Callable[[], int | None]) -> None:
  try:
    code = main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
  sys.exit(code or 0)


def add_model_args(p: argparse.ArgumentParser, default_model: str | None = None) -> None:
  from palijudge import session
  g = p.add_argument_group("model")
  g.add_argument("--model", default=default_model or session.DEFAULT_MODEL,
                 help="preset name (weights from cache/) or checkpoint .npz")
  g.add_argument("--model-config", help="model config JSON (for checkpoints without one)")
  g.add_argument("--tokenizer", help="sentencepiece model (default: next to the weights)")
  g.add_argument("--prompt", default=session.DEFAULT_PROMPT,
                 help="prompt used where a row's prefix is empty")
  g.add_argument("--param-dtype", default="auto", choices=session.PARAM_DTYPES,
                 help="dtype of frozen params (auto: as stored in the checkpoint)")
  g.add_argument("--compute-dtype", default="auto",
                 choices=("auto", "float32", "bfloat16", "float16"),
                 help="activation dtype (auto: bfloat16 on GPU, float32 on CPU)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
  from palijudge import evaluate, images
  g = p.add_argument_group("evaluation")
  g.add_argument("--mode", default="score", choices=evaluate.MODES,
                 help="score: p(yes) from one forward pass; decode: greedy answer")
  g.add_argument("--eval-batch", type=int, default=8, help="evaluation batch size")
  g.add_argument("--threshold", type=float, default=0.5, help="predict yes when p(yes) >= this")
  g.add_argument("--gif-frame", default="first", choices=images.GIF_FRAMES,
                 help="which frame of an animated GIF to judge")
  g.add_argument("--json", action="store_true", help="also print one JSON line per file")
  g.add_argument("--root", default="dataset",
                 help="dataset root: relative image paths are resolved against it")


def eval_options(args):
  from palijudge.runner import EvalOptions
  if not 0 < args.threshold < 1:
    raise UserError(f"--threshold must be in (0, 1), got {args.threshold}")
  if args.eval_batch < 1:
    raise UserError("--eval-batch must be >= 1")
  return EvalOptions(prompt=args.prompt, mode=args.mode, batch_size=args.eval_batch,
                     threshold=args.threshold, gif_frame=args.gif_frame, as_json=args.json)


def load_model(args, model: str | None = None, trainable: str = "attn"):
  from palijudge import session
  spec = session.resolve(model or args.model, args.model_config, args.tokenizer)
  return session.load(spec, trainable=trainable, param_dtype=args.param_dtype,
                      compute=args.compute_dtype)
