"""The numbered scripts' one entry point and their shared flags.

`run(main, __file__)` is the only place where process-wide state is set up,
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

Flags come from the config dataclasses (`options.add`), so each default and
its help are written once, on the field; `--help` shows every default.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from palijudge import files, options, progress
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


def parser(description: str) -> argparse.ArgumentParser:
  p = _Parser(description=description, formatter_class=_Formatter)
  p.add_argument("--project", default=None, metavar="DIR",
                 help="project folder holding cache/, dataset/, checkpoints/, experiments/ "
                      "(default: the folder above playground/)")
  _add_distributed_flags(p)
  p.add_argument("--progress", choices=progress.MODES, default="auto",
                 help="progress bars on stderr: auto shows them when stderr is a terminal")
  p.add_argument("--platform-allocator", action="store_true",
                 help="XLA_PYTHON_CLIENT_ALLOCATOR=platform: frees GPU memory at once, "
                      "at a large cost in speed")
  return p


def _add_distributed_flags(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("several processes (jax.distributed; deploy/ has launchers)")
  g.add_argument("--distributed", action="store_true",
                 help="join a multi-process run: Slurm and Open MPI are detected; elsewhere "
                      "give the three settings below or JAX_COORDINATOR_ADDRESS, "
                      "JAX_NUM_PROCESSES, JAX_PROCESS_ID")
  g.add_argument("--coordinator", metavar="HOST:PORT",
                 help="process 0's address and a free port, the same for every process")
  g.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
  g.add_argument("--process-id", type=int, metavar="I", help="this process: 0 .. N-1")
  g.add_argument("--heartbeat-timeout", type=int, default=100, metavar="S",
                 help="a process silent for S seconds counts as dead and the run stops")
  g.add_argument("--init-timeout", type=int, default=300, metavar="S",
                 help="stop (one line, exit 2) when the processes have not all joined after "
                      "S seconds; after 3 s a waiting process says what it waits for")


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


def run(main: Callable[[argparse.Namespace, Project], int | None], script: str,
        build: Callable[[], argparse.ArgumentParser]) -> None:
  """Parses the flags, sets up the process, runs `main(args, project)` behind the error boundary."""
  try:
    args = build().parse_args()
    project = Project.at(args.project) if args.project else Project.of_script(script)
    _setup(args, project)
    with files.command_inputs():  # What main reads, none of its writes may replace.
      code = main(args, project)
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


def _setup(args: argparse.Namespace, project: Project) -> None:
  # Each line of output leaves as it is written, as at a terminal: a summary on stderr
  # then follows the rows it sums up, and `| head` ends the script at its first line.
  if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(line_buffering=True)
  for key, value in _ENV_DEFAULTS.items():
    os.environ.setdefault(key, value)
  progress.set_mode(getattr(args, "progress", "auto"))
  if getattr(args, "platform_allocator", False):
    os.environ["XLA_PYTHON_CLIENT_ALLOCATOR"] = "platform"
  from palijudge import loader  # jax is imported here, after the environment is set.
  loader.enable_compile_cache(project.cache)
  if getattr(args, "distributed", False):
    from palijudge import distributed
    distributed.initialize(getattr(args, "coordinator", None),
                           getattr(args, "num_processes", None),
                           getattr(args, "process_id", None),
                           getattr(args, "heartbeat_timeout", 100),
                           getattr(args, "init_timeout", 300))
    if not distributed.is_main():  # Process 0 alone prints; errors (stderr) show from all.
      sys.stdout = open(os.devnull, "w")
  elif any(getattr(args, k, None) is not None for k in ("coordinator", "num_processes",
                                                         "process_id")):
    raise UserError("--coordinator, --num-processes and --process-id need --distributed")


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


def eval_flags_except(*keep: str) -> tuple[str, ...]:
  """The `skip` for add_eval_flags that leaves only `keep` (a script that trains, not judges)."""
  from palijudge import evaluate
  return (*(f.name for f in options.flags(evaluate.EvalConfig) if f.name not in keep),
          "eval_set")


def checkpoint_path(value: str, project: Project, flag: str) -> str:
  """A checkpoint to write: a path (with a / or .npz, from the cwd) or a name under checkpoints/."""
  if "/" in value or os.sep in value or value.endswith(".npz"):
    if not value.endswith(".npz"):
      raise UserError(f"{flag} {value!r}: a checkpoint path must end in .npz")
    return os.path.abspath(value)
  return str(files.inside(value + ".npz", project.checkpoints, flag))


ROOT_HELP = ("folder the data's relative image paths start from (default: for a split, the "
             "one 02-shuffle_data.py recorded in dataset/NAME/split.json; else dataset/ for a "
             "file inside it, else the file's own folder)")


def add_root_flag(p: argparse.ArgumentParser, *names: str) -> None:
  """--root (or the original script's `names`, e.g. -i): where image paths resolve."""
  p.add_argument(*(names or ("--root",)), dest="root", default=None, metavar="DIR",
                 help=ROOT_HELP)


def add_train_flags(p: argparse.ArgumentParser, aliases: dict[str, str] | None = None,
                    lottery: bool = True) -> None:
  """The recipe's flags (and, with `lottery`, 03's stages/runs flags); `aliases` as options.add."""
  from palijudge import learn, losses, train
  options.add(p, train.TrainConfig, "training", aliases=aliases)
  options.add(p, losses.LossConfig, "objective (see palijudge.losses)")
  if lottery:
    options.add(p, learn.LearnConfig, "stages and the lottery")


def data_root(args: argparse.Namespace, project: Project, of: str | os.PathLike | None = None
              ) -> str:
  """The one rule for every script: --root (-i) when given, else the root of `of` (a data file
  or a split's folder: data.splits.root_of), else the project's dataset/ folder."""
  if getattr(args, "root", None):
    return project.find(args.root)
  if of is None:
    return str(project.dataset)
  from palijudge.data import splits
  return splits.root_of(of, project.dataset)


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
               trainable: str = "attn", tcfg=None):
  """The --model (or `model`), said where it runs first. With `tcfg` (a training run) the
  parameters go straight to the training placement over every process's devices."""
  import jax
  from palijudge import loader
  lcfg = options.build(loader.LoadConfig, args)
  path = project.find(model) if model else model_file(lcfg.model, project)
  policy = "fsdp" if tcfg is not None and tcfg.fsdp and lcfg.mesh == "auto" else None
  lm = loader.load_model(lcfg, str(project.cache), trainable, path,
                         devices=jax.devices() if tcfg is not None else None, policy=policy)
  announce(lm, tcfg)
  return lm


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


def model_file(name: str, project: Project) -> str | None:
  """--model as a file, found in the project: a .npz, or a folder (a transformers
  checkpoint); None for a preset's name (its files are in cache/)."""
  found = project.find(name)
  return found if name.endswith(".npz") or os.path.isdir(found) else None


def model_inputs(args: argparse.Namespace, project: Project, paths: Sequence[str] = ()
                 ) -> list[tuple[str, str]]:
  """(what, file) of every file the model(s) `paths` (none: --model) are loaded from:
  weights, a delta's base, the tokenizer, a probe's encoder. Read before any work, so an
  output that is one of them is refused at once (`files.check_writable(..., inputs)`)."""
  from palijudge import loader, probe
  lcfg = options.build(loader.LoadConfig, args)
  out = [("the --base checkpoint", project.find(lcfg.base))] if lcfg.base else []
  for path in paths or [lcfg.model]:
    path = model_file(path, project) or path
    if probe.is_probe(path):
      fitted = probe.load(path)
      out += [("the probe file", path), ("the probe's encoder", fitted.encoder)]
      out += [("the probe's base", fitted.base)] if fitted.base else []
      continue
    out += loader.resolve(path, lcfg.model_config, lcfg.tokenizer, str(project.cache),
                          lcfg.base).inputs
  return out


def add_judge_flags(p: argparse.ArgumentParser, names: Sequence[str] = ("-m", "--checkpoint")
                    ) -> None:
  """-m CKPT (repeated, or a comma list: an ensemble; or a probe file) and --ensemble."""
  from palijudge import ensemble
  p.add_argument(*names, dest="checkpoint", action="append", default=[], metavar="CKPT",
                 help="checkpoint .npz or probe file (default: the base --model); repeat it or "
                      "give a comma list to judge with an ensemble")
  p.add_argument("--ensemble", default="mean", choices=ensemble.COMBINE, help=ensemble.HELP)


def judge_paths(args: argparse.Namespace, project: Project) -> list[str]:
  """The files -m names, found in the project; none given: --model when it is a file."""
  named = [part.strip() for value in args.checkpoint for part in value.split(",")
           if part.strip()]
  if not named and args.model.endswith(".npz"):
    named = [args.model]
  return [str(project.find(p)) for p in named]


def judge_config(args: argparse.Namespace, paths: Sequence[str], log=print):
  """EvalConfig whose threshold is --threshold, else the one `paths` store if they agree, else 0.5."""
  from palijudge import ensemble
  chosen = args.threshold is not None or getattr(args, "pick_threshold", None) \
      or args.mode != "score"
  return eval_config(args, None if chosen else ensemble.stored_threshold(paths, log))


def load_judge(args: argparse.Namespace, project: Project, paths: Sequence[str], ecfg):
  """ensemble.Judge for `paths`: the --model, one checkpoint, an ensemble or a probe."""
  from palijudge import ensemble, loader
  judge = ensemble.load_judge(paths, options.build(loader.LoadConfig, args), str(project.cache),
                              ecfg, getattr(args, "ensemble", "mean"))
  announce(judge.lm)
  return judge


def eval_sets(args: argparse.Namespace, project: Project, taken: Sequence[str] = ()) -> dict:
  """{NAME: examples} of every --eval-set NAME=FILE (images: `data_root` of each file)."""
  from palijudge.data import examples
  out: dict = {}
  for spec in getattr(args, "eval_set", None) or []:
    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
      raise UserError(f"--eval-set {spec!r}: expected NAME=FILE, e.g. safe=dataset/safe.jsonl")
    if name in out or name in taken:
      raise UserError(f"--eval-set {name}: the name is already used; pick another")
    path = project.find(path)
    out[name] = examples.read_examples(path, data_root(args, project, path))
  return out


def add_audit_flags(p: argparse.ArgumentParser) -> None:
  """The duplicate checks' flags (data.audit.AuditConfig); --embeddings also needs --model."""
  from palijudge.data import audit
  options.add(p, audit.AuditConfig, "duplicates (see palijudge.data.audit)")


def run_audit(args: argparse.Namespace, project: Project, sets: dict, root: str | None = None):
  """data.audit.find over {NAME: examples} with the flags' config and the decisions file
  (--decisions, else dataset/audit-decisions.tsv when it exists; its image paths resolve
  against `root`, the sets' root, default `data_root`); loads the model for --embeddings."""
  from palijudge.data import audit, decisions
  acfg = options.build(audit.AuditConfig, args)
  path = (project.find(acfg.decisions) if acfg.decisions else
          str(project.dataset / decisions.FILE_NAME))
  decided = (decisions.read(path, root or data_root(args, project))
             if acfg.decisions or os.path.isfile(path) else decisions.NONE)
  embed = None
  if acfg.embeddings:
    from palijudge import loader
    lm = load_model(args, project)
    features = loader.encoder_cache(lm, "first")  # Frozen encoder: cached on disk.
    embed = lambda exs: features.pooled(exs, lm.cfg.image_size)  # noqa: E731
  return audit.find(sets, acfg, embed, decided, path)
