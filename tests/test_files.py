"""palijudge.files: atomic writes, unwritable places, stale temp files, names, sha256, folders."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys

import pytest

from palijudge import files
from palijudge.errors import UserError


def _one_line(e: pytest.ExceptionInfo) -> str:
  msg = str(e.value)
  assert "\n" not in msg, msg
  return msg


# Atomic writes -----------------------------------------------------------------

def test_failed_block_keeps_the_old_content_and_no_temp_file(tmp_path):
  target = tmp_path / "out.txt"
  target.write_text("old\n")
  with pytest.raises(RuntimeError, match="boom"), files.atomic_open(target) as f:
    f.write("new, half written")
    assert [p.name for p in tmp_path.iterdir() if p.name != "out.txt"]  # The temp file.
    raise RuntimeError("boom")
  assert target.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["out.txt"]
  # A first write that fails leaves nothing at all.
  with pytest.raises(KeyboardInterrupt), files.atomic_open(tmp_path / "fresh.bin", "wb") as f:
    f.write(b"x")
    raise KeyboardInterrupt
  assert os.listdir(tmp_path) == ["out.txt"]


def test_write_text_and_bytes_round_trip(tmp_path):
  text = "héllo\nwörld\r\n"
  assert files.write_text(tmp_path / "a" / "t.txt", text) == tmp_path / "a" / "t.txt"
  assert (tmp_path / "a" / "t.txt").read_bytes() == text.encode("utf-8")  # No newline rewrite.
  files.write_text(tmp_path / "a" / "lines.txt", (f"{i}\n" for i in range(3)))
  assert (tmp_path / "a" / "lines.txt").read_text() == "0\n1\n2\n"
  data = bytes(range(256)) * 3
  assert files.write_bytes(tmp_path / "b.bin", data) == tmp_path / "b.bin"
  assert (tmp_path / "b.bin").read_bytes() == data
  files.write_bytes(tmp_path / "b.bin", b"shorter")  # Replaces, never appends.
  assert (tmp_path / "b.bin").read_bytes() == b"shorter"
  assert sorted(os.listdir(tmp_path)) == ["a", "b.bin"]
  assert sorted(os.listdir(tmp_path / "a")) == ["lines.txt", "t.txt"]


def test_written_files_follow_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    files.write_text(tmp_path / "x.txt", "x")
  finally:
    os.umask(old)
  assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644  # Not mkstemp's 0600.


def test_parent_that_is_a_file_is_a_user_error(tmp_path):
  blocker = tmp_path / "blocker"
  blocker.write_text("a file, not a folder")
  for target in (blocker / "out.txt", blocker / "sub" / "out.txt"):
    with pytest.raises(UserError) as e:
      files.write_text(target, "x")
    assert str(blocker) in _one_line(e)
  assert blocker.read_text() == "a file, not a folder"
  assert os.listdir(tmp_path) == ["blocker"]


def test_target_that_is_a_folder_is_a_user_error(tmp_path):
  (tmp_path / "out").mkdir()
  with pytest.raises(UserError) as e:
    files.write_bytes(tmp_path / "out", b"x")
  assert str(tmp_path / "out") in _one_line(e)
  assert os.listdir(tmp_path) == ["out"] and not os.listdir(tmp_path / "out")  # No temp left.


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="running as root: root writes into a chmod 0o500 folder anyway, so "
                           "a read-only folder cannot be made here (the parent-is-a-file and "
                           "target-is-a-folder tests cover unwritable places as root)")
def test_read_only_folder_is_a_user_error(tmp_path):
  folder = tmp_path / "ro"
  folder.mkdir()
  folder.chmod(0o500)
  try:
    with pytest.raises(UserError) as e:
      files.write_text(folder / "out.txt", "x")
    assert str(folder / "out.txt") in _one_line(e)
    with pytest.raises(UserError):
      files.check_writable(folder / "out.txt")
  finally:
    folder.chmod(0o700)
  assert not os.listdir(folder)


def test_check_writable(tmp_path):
  target = tmp_path / "new" / "deeper" / "result.tsv"
  files.check_writable(target)  # Creates the folder, writes nothing that stays.
  assert (tmp_path / "new" / "deeper").is_dir() and not os.listdir(tmp_path / "new" / "deeper")
  blocker = tmp_path / "blocker"
  blocker.write_text("x")
  (tmp_path / "adir").mkdir()
  work = []

  def job(out):
    files.check_writable(out, "predictions file")
    work.append("an hour of scoring")

  for bad, named in ((blocker / "result.tsv", blocker), (tmp_path / "adir", tmp_path / "adir")):
    with pytest.raises(UserError) as e:
      job(bad)
    assert str(named) in _one_line(e)
  assert not work  # Refused before any work.
  with pytest.raises(UserError, match="predictions file is a folder"):
    files.check_writable(tmp_path / "adir", "predictions file")


def test_check_writable_sweeps_the_leftovers_of_its_own_file_only(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  mine, other = f".out.npz.{dead.pid}.k2j3h4.tmp", f".keep.npz.{dead.pid}.a1b2c3.tmp"
  for name in (mine, other):
    (tmp_path / name).write_bytes(b"half a checkpoint")
  files.check_writable(tmp_path / "out.npz", "checkpoint")
  assert os.listdir(tmp_path) == [other]


# One command's inputs are never its outputs ------------------------------------------

def test_same_file_sees_through_symbolic_and_hard_links(tmp_path):
  data = tmp_path / "data.jsonl"
  data.write_text("x\n")
  (tmp_path / "sym.jsonl").symlink_to(data)
  os.link(data, tmp_path / "hard.jsonl")
  (tmp_path / "sub").mkdir()
  for alias in ("sym.jsonl", "hard.jsonl", "sub/../data.jsonl", "./data.jsonl"):
    assert files.same_file(tmp_path / alias, data), alias
  (tmp_path / "copy.jsonl").write_text("x\n")
  assert not files.same_file(tmp_path / "copy.jsonl", data)
  assert not files.same_file(tmp_path / "new.jsonl", data)  # Not there yet: by name.
  assert files.same_file(tmp_path / "sub" / ".." / "new.jsonl", tmp_path / "new.jsonl")


def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path):
  data = tmp_path / "data.jsonl"
  data.write_text("keep me\n")
  os.link(data, tmp_path / "hard.jsonl")
  for out in (data, tmp_path / "hard.jsonl"):
    with pytest.raises(UserError) as e:
      files.check_writable(out, "--scores file", [("the dataset", data), ("the model", None)])
    msg = _one_line(e)
    assert msg.startswith(f"{out}: the --scores file would replace the dataset") and \
        "choose another name" in msg
  files.check_writable(tmp_path / "scores.jsonl", "--scores file", {"the dataset": data})
  assert data.read_text() == "keep me\n"


def test_inside_a_command_no_write_replaces_what_it_read(tmp_path):
  """The backstop in the one writer: whatever a script forgot to check."""
  data = tmp_path / "data.jsonl"
  data.write_text("keep me\n")
  (tmp_path / "link.jsonl").symlink_to(data)
  with files.command_inputs():
    files.note_input(data, "a data file")
    for out in (data, tmp_path / "link.jsonl"):
      with pytest.raises(UserError, match="would replace a data file"):
        files.write_text(out, "scores")
      with pytest.raises(UserError, match="would replace a data file"):
        files.check_writable(out, "output")
    files.write_text(tmp_path / "other.jsonl", "fine")
  assert data.read_text() == "keep me\n"
  assert sorted(os.listdir(tmp_path)) == ["data.jsonl", "link.jsonl", "other.jsonl"]
  files.note_input(data)  # Outside a command: remembered nowhere, nothing refused.
  files.write_text(data, "replaced on purpose")
  assert data.read_text() == "replaced on purpose"


# Locks ---------------------------------------------------------------------------

HOLD = """
import sys, time
from palijudge import files
with files.lock(sys.argv[1], "checkpoint"):
  print("held", flush=True)
  time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
  target = tmp_path / "x.npz"
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(UserError) as e, files.lock(target, "checkpoint"):
      pass
    assert _one_line(e) == (f"{target}: another run (pid {holder.pid}) is writing this "
                            f"checkpoint; wait for it to end, or choose another name")
  finally:
    holder.kill()
    holder.wait()
  with files.lock(target, "checkpoint"):  # The kernel released the killed holder's lock.
    assert open(files.lock_path(target)).read() == f"{os.getpid()}\n"
  assert os.listdir(tmp_path) == []  # Released: the lock file is gone.


def test_a_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  target = tmp_path / "x.npz"
  with open(files.lock_path(target), "w") as f:
    f.write(f"{dead.pid}\n")
  with files.lock(target):
    assert open(files.lock_path(target)).read() == f"{os.getpid()}\n"
  assert not os.path.exists(files.lock_path(target))


def test_without_flock_the_pid_in_the_lock_decides(tmp_path, monkeypatch):
  import fcntl

  def no_flock(fd, op):
    raise OSError(errno.ENOLCK, "no locks")
  monkeypatch.setattr(fcntl, "flock", no_flock)
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    target = tmp_path / "x.npz"
    with open(files.lock_path(target), "w") as f:
      f.write(f"{live.pid}\n")
    with pytest.raises(UserError, match=f"pid {live.pid}"), files.lock(target):
      pass
  finally:
    live.kill()
    live.wait()
  with files.lock(target):  # Its holder is dead now.
    pass


# Stale temp files ----------------------------------------------------------------

def test_sweep_stale_removes_dead_writers_temp_files_only(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    names = {"dead": f".out.txt.{dead.pid}.k2j3h4.tmp",
             "live": f".out.txt.{live.pid}.a1b2c3.tmp",
             "mine": f".out.txt.{os.getpid()}.zz9.tmp",
             "user": "out.txt", "other": ".hidden.tmp"}
    for name in names.values():
      (tmp_path / name).write_text("x")
    assert files.sweep_stale(tmp_path) == [names["dead"]]
    assert sorted(os.listdir(tmp_path)) == sorted(v for k, v in names.items() if k != "dead")
  finally:
    live.kill()
    live.wait()
  assert files.sweep_stale(tmp_path / "absent") == []


def test_a_live_writers_temp_file_is_kept_and_named_for_the_sweep(tmp_path):
  with files.atomic_open(tmp_path / "out.txt") as f:
    f.write("x")
    (tmp,) = os.listdir(tmp_path)
    assert tmp.startswith(f".out.txt.{os.getpid()}.") and tmp.endswith(".tmp")
    assert files.sweep_stale(tmp_path) == [] and os.listdir(tmp_path) == [tmp]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp.replace(f".{os.getpid()}.", f".{dead.pid}.")
    (tmp_path / orphan).write_text("left by a killed writer")
    assert files.sweep_stale(tmp_path) == [orphan]
  assert os.listdir(tmp_path) == ["out.txt"]


# Names inside a folder ----------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../b", "", "..", "a/../.."])
def test_inside_refuses_escaping_names(tmp_path, name):
  with pytest.raises(UserError) as e:
    files.inside(name, tmp_path, "--name")
  assert _one_line(e).startswith(f"--name {name!r}")


def test_inside_below_refuses_the_folder_itself(tmp_path):
  for name in (".", "a/..", "./"):
    with pytest.raises(UserError, match="names .* itself; give a name below it"):
      files.inside(name, tmp_path, "-n", below=True)
  assert files.inside(".", tmp_path, "-d") == tmp_path.resolve()


def test_inside_accepts_names_below(tmp_path):
  assert files.inside("a/b", tmp_path, "--name") == tmp_path.resolve() / "a" / "b"
  assert files.inside("run-1", tmp_path, "--name") == tmp_path.resolve() / "run-1"
  assert files.inside("a/../c", tmp_path, "--name") == tmp_path.resolve() / "c"


# sha256 ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 5, (1 << 24) + 7])  # Empty, small, more than one block.
def test_sha256_matches_hashlib(tmp_path, size):
  data = os.urandom(size)
  (tmp_path / "f").write_bytes(data)
  assert files.sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_sha256_remembered_reuses_its_sidecar_until_the_file_changes(tmp_path, monkeypatch):
  calls = []
  real = files.sha256
  monkeypatch.setattr(files, "sha256", lambda p: calls.append(p) or real(p))
  path = tmp_path / "weights.npz"
  path.write_bytes(b"first version")
  side = tmp_path / "weights.npz.sha256"
  want = hashlib.sha256(b"first version").hexdigest()
  assert files.sha256_remembered(path) == want and len(calls) == 1
  st = path.stat()
  assert side.read_text() == f"{want} {st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}\n"
  assert files.sha256_remembered(path) == want and len(calls) == 1  # From the sidecar.
  # Another size: hashed again.
  path.write_bytes(b"second version, longer")
  assert files.sha256_remembered(path) == hashlib.sha256(path.read_bytes()).hexdigest()
  assert len(calls) == 2
  # Same size, other bytes, other mtime: hashed again.
  path.write_bytes(b"SECOND VERSION, LONGER")
  st = path.stat()
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert files.sha256_remembered(path) == hashlib.sha256(b"SECOND VERSION, LONGER").hexdigest()
  assert len(calls) == 3
  assert files.sha256_remembered(path) == hashlib.sha256(b"SECOND VERSION, LONGER").hexdigest()
  assert len(calls) == 3
  # A damaged sidecar costs a re-hash, never an error.
  side.write_text("garbage")
  assert files.sha256_remembered(path) == hashlib.sha256(b"SECOND VERSION, LONGER").hexdigest()
  assert len(calls) == 4
  # Another file put in its place with the same size and mtime (cp -p, rsync -t): hashed again.
  other = tmp_path / "other.npz"
  other.write_bytes(b"THIRD  VERSION, LONGER")
  os.utime(other, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
  os.replace(other, path)
  assert files.sha256_remembered(path) == hashlib.sha256(b"THIRD  VERSION, LONGER").hexdigest()
  assert len(calls) == 5


# Project folders ------------------------------------------------------------------

def test_project_folders(tmp_path):
  p = files.Project.at(tmp_path)
  assert p.root == tmp_path.resolve()
  assert (p.cache, p.dataset, p.checkpoints, p.experiments) == tuple(
      tmp_path.resolve() / n for n in files.FOLDERS)
  assert files.Project.of_script(tmp_path / "playground" / "03-do_learn.py").root == (
      tmp_path.resolve())


def test_project_find_prefers_the_cwd_then_the_root(tmp_path, monkeypatch):
  root, cwd = tmp_path / "root", tmp_path / "cwd"
  (root / "checkpoints").mkdir(parents=True)
  (cwd / "checkpoints").mkdir(parents=True)
  monkeypatch.chdir(cwd)
  p = files.Project.at(root)
  (root / "checkpoints" / "x.npz").write_bytes(b"root's")
  (cwd / "checkpoints" / "x.npz").write_bytes(b"cwd's")
  assert p.find("checkpoints/x.npz") == "checkpoints/x.npz"  # As given: from the cwd.
  os.remove(cwd / "checkpoints" / "x.npz")
  assert p.find("checkpoints/x.npz") == str(root.resolve() / "checkpoints" / "x.npz")
  assert p.find("checkpoints/none.npz") == "checkpoints/none.npz"  # Neither: as given.
  absolute = str(tmp_path / "elsewhere.npz")
  assert p.find(absolute) == absolute
