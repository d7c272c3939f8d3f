"""The numbered scripts' one entry point and their shared flags.

`run(main, __file__)` is the only place where process-wide state is set up,
explicitly and once: the GPU memory environment (the users' settings, unless
the environment already chooses), the persistent compilation cache under the
project's `cache/`, and `jax.distributed` when `--distributed` asks for it. It
is also the one error boundary: bad input (`UserError`) and failed file
operations (`OSError`) print one line and exit with status 2; Ctrl-C exits
130. Importing this module does nothing else.

Flags come from the config dataclasses (`options.add`), so each default and
its help are written once, on the field; `--help` shows every default.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from palijudge import options
from palijudge.errors import UserError, where
from palijudge.files import Project

# The users' GPU memory settings: XLA takes memory as it needs it instead of
# 75 % up front. `--platform-allocator` (or XLA_PYTHON_CLIENT_ALLOCATOR in the
# environment) trades speed for memory; JAX documents it as very slow.
_ENV_DEFAULTS = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}


class _Formatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the usage examples' layout and shows each default once."""

  def _get_help_string(self, action):
    text = action.help or ""
    if "(default" in text or action.default in (None, False, argparse.SUPPRESS) \
        or not action.option_strings:
      return text
    return f"{text} (default: {action.default})"


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # One line, exit 2, like every other bad input.
    print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def parser(description: str) -> argparse.ArgumentParser:
  p = _Parser(description=description, formatter_class=_Formatter)
  p.add_argument("--project", default=None, metavar="DIR",
                 help="project folder holding cache/, dataset/, checkpoints/, experiments/ "
                      "(default: the folder above playground/)")
  p.add_argument("--distributed", action="store_true",
                 help="join a multi-process run (jax.distributed.initialize: Slurm, "
                      "Kubernetes or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
  p.add_argument("--platform-allocator", action="store_true",
                 help="XLA_PYTHON_CLIENT_ALLOCATOR=platform: frees GPU memory at once, "
                      "at a large cost in speed")
  return p


def run(main: Callable[[argparse.Namespace, Project], int | None], script: str,
        build: Callable[[], argparse.ArgumentParser]) -> None:
  """Parses the flags, sets up the process, runs `main(args, project)` behind the error boundary."""
  try:
    args = build().parse_args()
    project = Project.at(args.project) if args.project else Project.of_script(script)
    _setup(args, project)
    code = main(args, project)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # A write or read the checks before could not foresee.
    name = f"{where(e.filename)}: " if getattr(e, "filename", None) else ""
    print(f"error: {name}{e.strerror or e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
  sys.exit(code or 0)


def _setup(args: argparse.Namespace, project: Project) -> None:
  for key, value in _ENV_DEFAULTS.items():
    os.environ.setdefault(key, value)
  if getattr(args, "platform_allocator", False):
    os.environ["XLA_PYTHON_CLIENT_ALLOCATOR"] = "platform"
  from palijudge import loader  # jax is imported here, after the environment is set.
  loader.enable_compile_cache(project.cache)
  if getattr(args, "distributed", False):
    import jax
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      raise UserError(f"--distributed: {e}") from None


# --- Shared flag groups --------------------------------------------------------

def add_model_flags(p: argparse.ArgumentParser, default_model: str | None = None) -> None:
  from palijudge import loader
  options.add(p, loader.LoadConfig, "model",
              defaults={"model": default_model} if default_model else None)


def add_eval_flags(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
  from palijudge import evaluate
  options.add(p, evaluate.EvalConfig, "evaluation", skip=skip)
  if "eval_set" not in skip:
    p.add_argument("--eval-set", action="append", default=[], metavar="NAME=FILE",
                   help="extra evaluation set (.jsonl or .tsv), repeatable")


def add_root_flag(p: argparse.ArgumentParser, short: str | None = None) -> None:
  names = ["--root"] + ([short] if short else [])
  p.add_argument(*names, dest="root", default=None,
                 help="dataset root: relative image paths resolve against it "
                      "(default: the project's dataset/ folder)")


def add_train_flags(p: argparse.ArgumentParser) -> None:
  from palijudge import learn, losses, train
  options.add(p, train.TrainConfig, "training")
  options.add(p, losses.LossConfig, "objective (see palijudge.losses)")
  options.add(p, learn.LearnConfig, "stages and the lottery")


def data_root(args: argparse.Namespace, project: Project) -> str:
  return project.find(args.root) if getattr(args, "root", None) else str(project.dataset)


def eval_config(args: argparse.Namespace, stored: float | None = None):
  """EvalConfig from the flags, its threshold resolved (a checkpoint's `stored` one counts)."""
  from palijudge import evaluate
  return options.build(evaluate.EvalConfig, args).resolved(
      None if getattr(args, "pick_threshold", None) else stored)


def train_config(args: argparse.Namespace):
  from palijudge import losses, train
  loss = losses.from_flags(options.given(losses.LossConfig, args))
  return options.build(train.TrainConfig, args, loss=loss)


def load_model(args: argparse.Namespace, project: Project, model: str | None = None,
               trainable: str = "attn"):
  from palijudge import loader
  lcfg = options.build(loader.LoadConfig, args)
  path = model or (lcfg.model if lcfg.model.endswith(".npz") else None)  # A preset stays a name.
  return loader.load_model(lcfg, str(project.cache), trainable,
                           project.find(path) if path else None)


def eval_sets(args: argparse.Namespace, root: str, taken: Sequence[str] = ()) -> dict:
  """{NAME: examples} of every --eval-set NAME=FILE."""
  from palijudge.data import examples
  out: dict = {}
  for spec in getattr(args, "eval_set", None) or []:
    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
      raise UserError(f"--eval-set {spec!r}: expected NAME=FILE, e.g. safe=dataset/safe.jsonl")
    if name in out or name in taken:
      raise UserError(f"--eval-set {name}: the name is already used; pick another")
    out[name] = examples.read_examples(path, root)
  return out
