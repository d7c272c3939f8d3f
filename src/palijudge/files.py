"""Files: the project's folders, the one atomic writer, the one sha256 helper.

Project folders. `cache/`, `dataset/`, `checkpoints/` and `experiments/` live
under one project root. The numbered scripts take the root from their own
location (the folder above `playground/`), so they behave the same whether run
from the root, from `playground/` or from anywhere else; library callers pass
a root or get the current directory.

Atomic writes. Every file the project writes goes through `atomic_open`: the
content goes to a temp file in the target's folder, is flushed to disk, and
is renamed over the target, so a reader (or a killed writer) never leaves a
half-written file. Temp names carry the writer's pid
(`.NAME.PID.RANDOM.tmp`), so `sweep_stale` can remove the leftovers of a
killed process without touching a live writer's.

One command's inputs are never its outputs. A script names the files it reads
(data, model, its base, a parent, predictions) when it checks its outputs
(`check_writable(path, what, inputs)`), before any work; and inside `cli.run`
every file the library reads as an input (`note_input`: datasets, prediction
files, model weights and the files a delta depends on) is remembered, and
`atomic_open` refuses to replace one of them. Two paths are the same file
when they name one inode (`same_file`: symbolic and hard links alike).

Locks. `lock(path)` holds an output for the length of a run (a checkpoint
being trained, an inference output): a second writer is refused with one
line naming the holder's pid. The lock is an flock on `.NAME.lock` beside the
file, released by the kernel when its holder dies, so a stale lock of a
killed run is taken over without asking.

Hashes. `sha256` hashes a file's bytes. `sha256_remembered` keeps the digest
in a `<file>.sha256` sidecar stamped with the file's size, mtime, inode and
ctime, and re-hashes when any of them changed (a multi-GB checkpoint is
hashed once). Replacing the file (a copy, `cp -p`, `rsync -t`, a rename over
it, a new volume) changes the inode or ctime even where size and mtime are
kept, so the content is hashed again then; only an in-place rewrite of the
same size that also restores mtime and ctime would go unseen, and setting
ctime needs root. The sidecar is a cache for our own large checkpoints (a
delta's base), never for files a user hands in.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Union

from palijudge.errors import UserError, where

try:
  import fcntl
except ImportError:  # Not POSIX: the pid in the lock file decides (see `lock`).
  fcntl = None

FOLDERS = ("cache", "dataset", "checkpoints", "experiments")


@dataclasses.dataclass(frozen=True)
class Project:
  """Where the project's folders are: one root, four fixed names below it."""
  root: Path

  @classmethod
  def at(cls, root: str | os.PathLike | None = None) -> Project:
    return cls(Path(root if root is not None else os.getcwd()).resolve())

  @classmethod
  def of_script(cls, script: str | os.PathLike) -> Project:
    """The root for a numbered script: the folder above `playground/`, else the cwd."""
    here = Path(script).resolve().parent
    return cls(here.parent) if here.name == "playground" else cls.at()

  @property
  def cache(self) -> Path:
    return self.root / "cache"

  @property
  def dataset(self) -> Path:
    return self.root / "dataset"

  @property
  def checkpoints(self) -> Path:
    return self.root / "checkpoints"

  @property
  def experiments(self) -> Path:
    return self.root / "experiments"

  def split(self, name: str, flag: str = "-d") -> Path:
    """A split's folder, for every script: NAME under dataset/, where `02-shuffle_data.py -n
    NAME` writes it (train/valid/test files or folds, and split.json, which records where
    their image paths resolve: data.splits.root_of). `--root` never moves it: that flag only
    overrides where the image paths resolve (a read-only folder of images will do).
    The dataset folder itself (`.`) is no split."""
    return inside(name, self.dataset, flag, below=True)

  def find(self, path: str | os.PathLike) -> str:
    """A user-given relative path: as given if it exists from the cwd, else under the root.

    So `04-validate.py -m checkpoints/x.npz` works from `playground/` too.
    """
    path = os.fspath(path)
    if os.path.isabs(path) or os.path.exists(path):
      return path
    candidate = self.root / path
    return str(candidate) if candidate.exists() else path


def shown(path: str | os.PathLike) -> str:
  """How a path is printed: relative to the cwd when it lies below it, else absolute."""
  rel = os.path.relpath(os.path.abspath(path))
  return os.path.abspath(path) if rel.startswith("..") else rel


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
  """Whether `path` is `folder` or below it, links resolved."""
  path, folder = Path(path).resolve(), Path(folder).resolve()
  return path == folder or folder in path.parents


def inside(name: str, folder: str | os.PathLike, what: str, below: bool = False) -> Path:
  """folder/name, refusing a name that escapes `folder` (`../x`, `/abs`, `a/../../b`).

  `below`: the folder itself (`.`, `a/..`) is refused too (a place to write into).
  """
  folder = Path(folder).resolve()
  if not name or os.path.isabs(name):
    raise UserError(f"{what} {name!r}: give a plain name below {folder}, not a path")
  target = (folder / name).resolve()
  if target == folder and below:
    raise UserError(f"{what} {name!r}: names {folder} itself; give a name below it")
  if target != folder and folder not in target.parents:
    raise UserError(f"{what} {name!r}: the name leaves {folder}; give a plain name")
  return target


# --- One command's inputs are never its outputs -----------------------------------

PathLike = Union[str, os.PathLike]
Inputs = Union[Mapping[str, PathLike | None], Iterable[tuple[str, PathLike | None]]]
# (what, path) of every input read so far inside `command_inputs()`; None outside it.
_READ: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "palijudge_inputs", default=None)


def same_file(a: PathLike, b: PathLike) -> bool:
  """Whether `a` and `b` are one file: symbolic and hard links resolved (one inode).

  A path that does not exist yet compares by its resolved name.
  """
  try:
    return os.path.samefile(a, b)
  except OSError:
    return os.path.realpath(a) == os.path.realpath(b)


@contextlib.contextmanager
def command_inputs() -> Iterator[None]:
  """One command: inside, `note_input` remembers inputs and `atomic_open` never replaces one."""
  token = _READ.set([])
  try:
    yield
  finally:
    _READ.reset(token)


def note_input(path: PathLike | None, what: str = "an input") -> None:
  """Remembers that this command reads `path` (no-op outside `command_inputs`)."""
  seen = _READ.get()
  if seen is not None and path:
    entry = (what, os.fspath(path))
    if entry not in seen:
      seen.append(entry)


def _pairs(inputs: Inputs) -> list[tuple[str, PathLike | None]]:
  return list(inputs.items()) if isinstance(inputs, Mapping) else list(inputs)


def check_not_input(path: PathLike, what: str, inputs: Inputs = ()) -> None:
  """Refuses (one line) an output that is one of the command's inputs, links resolved.

  `inputs`: (what, path) pairs or {what: path}; those `note_input` saw count too.
  """
  for label, src in _pairs(inputs) + list(_READ.get() or ()):
    if src and same_file(path, src):
      alias = "" if os.path.abspath(path) == os.path.abspath(src) else f" ({shown(src)})"
      raise UserError(f"{where(path)}: the {what} would replace {label}{alias}, an input "
                      f"of this command: choose another name")


def _tmp_prefix(path: str) -> str:
  return f".{os.path.basename(path)}.{os.getpid()}."


def _ensure_folder(folder: str) -> None:
  try:
    os.makedirs(folder, exist_ok=True)
  except FileExistsError:
    raise UserError(f"{where(folder)}: cannot write here: a file is in the way of the folder") from None
  except OSError as e:
    raise UserError(f"{where(folder)}: cannot create the folder: {e.strerror or e}") from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
  """A file object whose content replaces `path` only when the block succeeds.

  mode "w" (UTF-8 text, "\\n" newlines) or "wb". Permissions follow the umask
  (not mkstemp's 0600: a team folder stays readable). An OSError (read-only
  folder, full disk) becomes one UserError naming the file.
  """
  path = os.fspath(path)
  check_not_input(path, "output")
  folder = os.path.dirname(os.path.abspath(path))
  _ensure_folder(folder)
  try:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_tmp_prefix(path), suffix=".tmp")
  except OSError as e:
    raise UserError(f"{where(path)}: cannot write: {e.strerror or e}") from None
  try:
    f = os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}))
    with f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except OSError as e:
    remove(tmp)
    raise UserError(f"{where(path)}: cannot write: {e.strerror or e}") from None
  except BaseException:
    remove(tmp)
    raise


def remove(path: str | os.PathLike) -> None:
  """Removes a file if it is there (a leftover, a finished partial file)."""
  with contextlib.suppress(OSError):
    os.remove(path)


def write_text(path: str | os.PathLike, text: str | Iterable[str]) -> Path:
  """Writes text (a string or an iterable of lines) atomically."""
  with atomic_open(path, "w") as f:
    f.write(text) if isinstance(text, str) else f.writelines(text)
  return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  with atomic_open(path, "wb") as f:
    f.write(data)
  return Path(path)


def check_writable(path: str | os.PathLike, what: str = "output", inputs: Inputs = ()) -> None:
  """Fails now, with one line, if `path` could not be written later, or is an input.

  `inputs`: the command's inputs as `check_not_input` takes them. Creates the
  folder if needed and writes (then removes) a probe file there, so a long
  evaluation never ends in a lost result; a killed writer's leftovers of
  `path` are removed (`sweep_stale`).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise UserError(f"{where(path)}: the {what} is a folder, not a file")
  check_not_input(path, what, inputs)
  with atomic_open(os.path.join(os.path.dirname(os.path.abspath(path)),
                                f".{os.path.basename(path)}.probe"), "w"):
    pass
  remove(os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.probe"))
  sweep_stale(os.path.dirname(os.path.abspath(path)), os.path.basename(path))


_TMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def pid_alive(pid: int) -> bool:
  """Whether a process with this id runs on this machine (a stale lock or record's owner)."""
  try:
    os.kill(pid, 0)
  except OSError as e:
    return e.errno == errno.EPERM
  return True


def sweep_stale(folder: str | os.PathLike, of: str | None = None) -> list[str]:
  """Removes temp files that killed writers left in `folder` (only those of the file
  named `of`, if given); returns their names."""
  gone = []
  try:
    names = os.listdir(folder)
  except OSError:
    return gone
  for name in names:
    m = _TMP.match(name)
    if of is not None and not name.startswith(f".{of}."):
      continue
    if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
      remove(os.path.join(folder, name))
      gone.append(name)
  return gone


def lock_path(path: PathLike) -> str:
  """Where `lock` keeps its lock for `path`: `.NAME.lock` in the same folder."""
  path = os.path.abspath(os.fspath(path))
  return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


@contextlib.contextmanager
def lock(path: PathLike, what: str = "file") -> Iterator[None]:
  """Holds `path` for this process until the block ends; a second holder is refused.

  The refusal is one line naming the holder's pid. A killed holder's lock is
  released by the kernel and taken over; where the filesystem has no flock,
  the pid written in the lock file decides (a dead pid's lock is taken over).
  """
  target, name = os.fspath(path), lock_path(path)
  _ensure_folder(os.path.dirname(name))
  while True:
    try:
      fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
      raise UserError(f"{where(target)}: cannot lock it ({where(name)}: {e.strerror or e})"
                      ) from None
    held = _flock(fd)
    holder = _pid_in(fd)
    if held is False or (held is None and holder not in (None, os.getpid())
                         and pid_alive(holder)):
      os.close(fd)
      raise UserError(f"{where(target)}: another run (pid {holder or 'unknown'}) is writing "
                      f"this {what}; wait for it to end, or choose another name")
    try:  # The holder may have removed the file between our open and flock: lock the new one.
      current = os.fstat(fd).st_ino == os.stat(name).st_ino
    except OSError:
      current = False
    if current:
      break
    os.close(fd)
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  try:
    yield
  finally:
    remove(name)
    os.close(fd)


def _flock(fd: int) -> bool | None:
  """True: locked; False: another process holds it; None: no flock on this filesystem."""
  if fcntl is None:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False
  except OSError:
    return None


def _pid_in(fd: int) -> int | None:
  try:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None


def sha256(path: str | os.PathLike) -> str:
  """sha256 of a file's bytes, read in 16 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      h.update(block)
  return h.hexdigest()


def sha256_text(text: str) -> str:
  """sha256 of a string's UTF-8 bytes (fingerprints of data lists and recipes)."""
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_remembered(path: str | os.PathLike) -> str:
  """sha256 of a (large) file, cached in `<file>.sha256` (see above for when it is trusted)."""
  path = os.fspath(path)
  st = os.stat(path)
  stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"
  side = path + ".sha256"
  try:
    with open(side, encoding="utf-8") as f:
      digest, seen = f.read().split()
    if seen == stamp:
      return digest
  except (OSError, ValueError):
    pass
  digest = sha256(path)
  with contextlib.suppress(UserError):  # A read-only folder only costs a re-hash next time.
    write_text(side, f"{digest} {stamp}\n")
  return digest
