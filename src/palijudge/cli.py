"""The numbered scripts' one entry point (what they decide from their configs: `resolve`).

Each script is `cli.run(Config, main)`: `Config` is its one frozen config tree
(its own fields plus the concern configs it composes, `configs.py`, every
field declared with `options.option`), from which the flags and `--help` are
generated; `main(config, project)` is its entry. `run` is the only place where process-wide state is set up,
explicitly and once: the GPU memory environment (the users' settings, unless
the environment already chooses), the persistent compilation cache under the
project's `cache/`, and `jax.distributed` when `--distributed` asks for it. It
is also the one error boundary: bad input (`UserError`) and failed file
operations (`OSError`) print one line and exit with status 2; Ctrl-C exits
130; a closed stdout (`... | head`) ends the script quietly with 141, as a
Unix filter ends. `main` runs inside `files.command_inputs`: no file it
writes may replace one it read. In a multi-process run only process 0 prints
to stdout, and a process that fails leaves at once, so the others stop too
instead of waiting for it.
Importing this module does nothing else.

Nothing here speaks argparse but through `options`: each default and its help
are written once, on the field; `--help` shows every default, and builds
without importing jax.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable, Sequence

from palijudge import configs, files, options, progress
from palijudge.errors import UserError, where
from palijudge.files import Project
from palijudge.options import group, option

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
    print(f"{self.prog}: error: {message}{_dash_hint(message)} (see --help)", file=sys.stderr)
    sys.exit(2)


def _dash_hint(message: str) -> str:
  """argparse reads a value such as -1 or -inf as a flag (these scripts have a -2 flag)."""
  missing = "expected one argument" in message or "arguments are required" in message
  dashed = [a for a in sys.argv[1:] if a.startswith("-") and _is_number(a)]
  return (f"; {dashed[0]} is read as a flag: write --flag={dashed[0]}, or put -- before it"
          if missing and dashed else "")


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


@dataclasses.dataclass(frozen=True)
class Distributed:
  """Joining a multi-process run (jax.distributed; deploy/ has launchers)."""
  distributed: bool = option(False, "join a multi-process run: Slurm and Open MPI are "
                             "detected; elsewhere give the three settings below or "
                             "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID")
  coordinator: str | None = option(None, "process 0's address and a free port, the same for "
                                   "every process", metavar="HOST:PORT")
  num_processes: int | None = option(None, "processes in the run", metavar="N")
  process_id: int | None = option(None, "this process: 0 .. N-1", metavar="I")
  heartbeat_timeout: int = option(100, "a process silent for S seconds counts as dead and "
                                  "the run stops", metavar="S")
  init_timeout: int = option(300, "stop (one line, exit 2) when the processes have not all "
                             "joined after S seconds; after 3 s a waiting process says what "
                             "it waits for", metavar="S")

  def __post_init__(self):
    named = (self.coordinator, self.num_processes, self.process_id)
    if not self.distributed and any(v is not None for v in named):
      raise UserError("--coordinator, --num-processes and --process-id need --distributed")


@dataclasses.dataclass(frozen=True)
class Process:
  """Every script's process flags: the project, progress bars, GPU memory, several processes."""
  project: str | None = option(None, "project folder holding cache/, dataset/, checkpoints/, "
                               "experiments/ (default: the folder above playground/)",
                               metavar="DIR")
  progress: str = option("auto", "progress bars on stderr: auto shows them when stderr is a "
                         "terminal", choices=progress.MODES)
  platform_allocator: bool = option(False, "XLA_PYTHON_CLIENT_ALLOCATOR=platform: frees GPU "
                                    "memory at once, at a large cost in speed")
  several: Distributed = group(Distributed, "several processes (jax.distributed; deploy/ has "
                               "launchers)")


def parser(spec, description: str | None) -> argparse.ArgumentParser:
  """The parser of a script whose config is `spec` (a tree, or {command: (tree, help)})."""
  p = _Parser(description=description, formatter_class=_Formatter)
  options.add(p, Process)
  return options.parser_for(spec, p)


def parse(spec, argv: Sequence[str], description: str | None = None):
  """(the script's config, the process config) from a command line, as `run` builds them."""
  args = parser(spec, description).parse_args(list(argv))
  return options.build_spec(spec, args), options.build(Process, args)


def _joined() -> bool:
  """Whether this process is part of a multi-process run (jax.distributed)."""
  jax = sys.modules.get("jax")
  joined = getattr(jax.distributed, "is_initialized", None) if jax is not None else None
  return bool(joined and joined())


def _fail(code: int, line: str | None = None) -> None:
  """Exit with `code`; in a multi-process run at once, without JAX's shutdown barrier.

  That barrier waits for every process, and the others may be waiting for
  this one inside a collective: they stop instead when its heartbeats do.
  """
  if line:
    print(line, file=sys.stderr)
  if _joined():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


def run(spec, main: Callable[[object, Project], int | None]) -> None:
  """Parses the flags into `spec`'s config tree (and the process flags), sets up the process,
  runs `main(config, project)` behind the error boundary. The script is `main`'s module:
  its docstring is the help's description, its folder places the project."""
  script = main.__globals__
  try:
    cfg, proc = parse(spec, sys.argv[1:], script.get("__doc__"))
    project = (Project.at(proc.project) if proc.project
               else Project.of_script(script["__file__"]))
    _setup(proc, project)
    with files.command_inputs():  # What main reads, none of its writes may replace.
      code = main(cfg, project)
    sys.stdout.flush()  # A closed pipe shows here, inside the boundary.
  except UserError as e:
    _fail(2, f"error: {e}")
  except BrokenPipeError:  # `... | head` stopped reading: leave quietly, as a Unix filter does.
    _closed_pipe()
  except OSError as e:  # A write or read the checks before could not foresee.
    name = f"{where(e.filename)}: " if getattr(e, "filename", None) else ""
    _fail(2, f"error: {name}{e.strerror or e}")
  except KeyboardInterrupt:
    _fail(130, "interrupted")
  except Exception as e:  # noqa: BLE001 - a multi-process run must not wait for a dead peer.
    if not _joined():
      raise
    _fail(1, _distributed_failure(e))
  sys.exit(code or 0)


def _closed_pipe() -> None:
  """Exit 141 (128 + SIGPIPE, what a shell reports for `cat | head`), without a word.

  stdout goes to /dev/null first, so the interpreter's own flush at exit does
  not fail on the closed pipe again.
  """
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
  except (OSError, ValueError):  # stdout without a file descriptor (a test's capture).
    pass
  _fail(128 + 13)


def _distributed_failure(e: Exception) -> str:
  """One line for a collective that failed (a peer died), else the traceback and a line."""
  import traceback
  import jax
  if not isinstance(e, jax.errors.JaxRuntimeError):
    traceback.print_exc()
  first = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return (f"error: process {jax.process_index()} of {jax.process_count()} stops: {first} "
          f"(another process has probably stopped; see its messages)")


def _setup(proc: Process, project: Project) -> None:
  # Each line of output leaves as it is written, as at a terminal: a summary on stderr
  # then follows the rows it sums up, and `| head` ends the script at its first line.
  if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(line_buffering=True)
  for key, value in _ENV_DEFAULTS.items():
    os.environ.setdefault(key, value)
  progress.set_mode(proc.progress)
  if proc.platform_allocator:
    os.environ["XLA_PYTHON_CLIENT_ALLOCATOR"] = "platform"
  from palijudge import loader  # jax is imported here, after the environment is set.
  loader.enable_compile_cache(project.cache)
  d = proc.several
  if d.distributed:
    from palijudge import distributed
    distributed.initialize(d.coordinator, d.num_processes, d.process_id, d.heartbeat_timeout,
                           d.init_timeout)
    if not distributed.is_main():  # Process 0 alone prints; errors (stderr) show from all.
      sys.stdout = open(os.devnull, "w")


# --- The fields scripts share (what is decided from them: `resolve`) ------------------

ROOT_HELP = ("folder the data's relative image paths start from (default: for a split, the "
             "one 02-shuffle_data.py recorded in dataset/NAME/split.json; else dataset/ for a "
             "file inside it, else the file's own folder)")


def root_option(*names: str):
  """--root (and the original script's `names`, e.g. -i): where image paths resolve."""
  return option(None, ROOT_HELP, flag="--root", names=names, metavar="DIR",
                suppress_default=True)


def eval_set_option():
  return option((), "extra evaluation set (.jsonl or .tsv), repeatable", many=True,
                metavar="NAME=FILE")


def eval_except(*keep: str) -> tuple[str, ...]:
  """The EvalConfig fields a script leaves out when it keeps only `keep` (a trainer)."""
  return tuple(f.name for f in options.flags(configs.EvalConfig) if f.name not in keep)


def announce(lm=None, tcfg=None, spec=None) -> None:
  """One line on stderr, before the heavy work: what this process runs on (backend, devices,
  memory, jax) and the parameters' placement, then a warning for a full-size model on the CPU.

  The model is `lm` (loaded) or `spec` (to be loaded, e.g. by each search trial); with
  `tcfg`, the warning estimates the training too. Said for every full-size model, and for
  any model when stderr is a terminal; a small model in a log or a pipe (the demo, the
  tests) stays quiet, so stderr keeps only errors there.
  """
  from palijudge import devices
  from palijudge import params as params_lib
  from palijudge.model import paligemma as model_lib
  spec = lm.spec if lm is not None else spec
  n_params = params_lib.count(model_lib.param_shapes(spec.cfg)) if spec is not None else 0
  if n_params < devices.FULL_SIZE and not sys.stderr.isatty():
    return
  line = devices.summary()
  mesh = lm.mesh if lm is not None else None
  if mesh is not None and mesh.devices.size > 1:
    fsdp = mesh.shape["fsdp"]
    line += (f"; parameters {'replicated' if fsdp == 1 else f'in FSDP groups of {fsdp}'}"
             f" over {mesh.devices.size} devices")
  print(line, file=sys.stderr)
  if spec is not None:
    warning = devices.cpu_warning(spec.name, n_params, spec.cfg.num_patches + 32,
                                  tcfg.batch_size * tcfg.accum if tcfg else None,
                                  tcfg.steps if tcfg else None)
    if warning:
      print(warning, file=sys.stderr)
