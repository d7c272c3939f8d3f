"""Kills inside writes: SIGKILL lands while a file is being written, and nothing good is lost.

A child process writes, through the library's own code, a 256 MB checkpoint
(`checkpoint.write_npz`, 16 parameters of 16 MB), a 96 MB train state
(`train.save_state`) or a 13-inference output (`infer.run`: rows streamed to
OUT.partial, then OUT written whole). The parent kills it (SIGKILL, no
cleanup) at a named point inside the write:

- opened: the temp file exists, empty;
- at N %: the temp file (or OUT.partial) has grown to N % of its size (the child's
  writes are slowed a little, so the size passes every mark);
- fsync: every byte written and flushed, before the fsync;
- rename: fsynced, before the rename over the target (between data and rename);
- unlink (13 only): OUT renamed complete, OUT.partial not yet removed.

The child pauses at the named points (it wraps `os.fsync`, `os.replace`,
`tempfile.mkstemp` and `os.remove`, which the one atomic writer calls, and
writes a marker first), so each kill lands exactly there. Then: the previous
good file is byte-identical, the leftovers are there, and the next start
(every writer's `files.check_writable`, or 13's resume) sweeps them; 13
finishes with the file an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from palijudge import files

MB = 1 << 20
HOOKS = r"""
import os, sys, tempfile, time, zipfile
kind, target, point, marks = sys.argv[1:5]
prefix = f".{os.path.basename(target)}.{os.getpid()}."
armed = []

def pause(name):
  if name == point:
    open(os.path.join(marks, name), "w").close()
    time.sleep(600)

real_mkstemp, real_fsync, real_replace, real_remove = (tempfile.mkstemp, os.fsync, os.replace,
                                                       os.remove)
def mkstemp(*a, **k):
  out = real_mkstemp(*a, **k)
  if k.get("prefix") == prefix:
    armed.append(out[1])
    pause("opened")
  return out
def fsync(fd):
  if armed:
    pause("fsync")
  return real_fsync(fd)
def replace(src, dst):
  if os.path.abspath(dst) == os.path.abspath(target):
    pause("rename")
  return real_replace(src, dst)
def remove(path):
  if str(path) == target + ".partial":
    pause("unlink")
  return real_remove(path)
tempfile.mkstemp, os.fsync, os.replace, os.remove = mkstemp, fsync, replace, remove
write = zipfile._ZipWriteFile.write
def slow(self, data):  # numpy writes an array in 16 MB chunks: a pause after each.
  n = write(self, data)
  time.sleep(0.03)
  return n
zipfile._ZipWriteFile.write = slow
"""

CHECKPOINT = HOOKS + r"""
import numpy as np
from palijudge import checkpoint
arrays = ((f"params/layer{i}/w", np.full((4 * 1024 * 1024,), i, np.float32)) for i in range(16))
checkpoint.write_npz(target, arrays, {"kind": "big"})
"""

STATE = HOOKS + r"""
import numpy as np
from palijudge import train
params = {f"w{i}": np.full((2 * 1024 * 1024,), i, np.float32) for i in range(12)}
state = train.TrainState(step=np.int32(7), params=params, opt_state=())
train.save_state(target, state, {"stage": 0, "seed": 0, "step": 7})
"""

INFER = HOOKS + r"""
import time
import numpy as np
from palijudge import infer
from palijudge.data.examples import Example
from palijudge.configs import EvalConfig
rows = [Example(image=f"/img/{i}.png", label=i % 2 == 0, prefix=f"p{i} " + "x" * 20000,
                suffix="yes", source="data.jsonl", line=i + 1, raw_image=f"{i}.png")
        for i in range(1500)]

def scorer(examples, ecfg, cache=None, features=None):
  for k in range(0, len(examples), 50):
    time.sleep(0.01)
    chunk = examples[k:k + 50]
    p = [(int(e.raw_image.split(".")[0]) * 37 % 1000) / 1000 for e in chunk]
    yield chunk, np.array(p, np.float32), [""] * len(chunk)

ecfg = EvalConfig(eval_batch=50).resolved()
source = infer.Source(model="m", data="d", n_examples=len(rows), model_id="m",
                      data_id=infer.data_id(rows))
infer.run(None, rows, target, source, ecfg, overwrite=True, progress=False, scorer=scorer)
"""

SIZES = {"checkpoint": 256 * MB, "state": 96 * MB, "infer": 1500 * 20000}


def _sha(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(MB), b""):
      h.update(block)
  return h.hexdigest()


def _start(code: str, kind: str, target: Path, point: str, marks: Path) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", code, kind, str(target), point, str(marks)],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _temps(folder: Path, name: str) -> list[Path]:
  return [p for p in folder.iterdir() if p.name.startswith(f".{name}.") and
          p.name.endswith(".tmp")]


def _kill_at(proc: subprocess.Popen, point: str, marks: Path, grows: Path | None,
             folder: Path, name: str, size: int) -> None:
  """SIGKILL `proc` at `point`: a marker it writes, or a file that grew to N % of `size`."""
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      pytest.fail(f"the writer ended before {point}: {proc.communicate()}")
    if point.endswith("%"):
      watched = [grows] if grows else _temps(folder, name)
      grown = max((p.stat().st_size for p in watched if p and p.exists()), default=0)
      if grown >= int(point[:-1]) * size // 100:
        break
    elif (marks / point).exists():
      break
    time.sleep(0.001)
  else:
    proc.kill()
    pytest.fail(f"never reached {point}")
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL


CASES = [("checkpoint", p) for p in ("opened", "10%", "50%", "90%", "fsync", "rename")] + \
        [("state", p) for p in ("opened", "50%", "fsync", "rename")] + \
        [("infer", p) for p in ("30%", "opened", "fsync", "rename", "unlink")]
CODES = {"checkpoint": CHECKPOINT, "state": STATE, "infer": INFER}


@pytest.mark.parametrize("kind, point", CASES, ids=[f"{k} at {p}" for k, p in CASES])
def test_a_kill_inside_a_write_loses_nothing(kind, point, tmp_path):
  folder, marks = tmp_path / "out", tmp_path / "marks"
  folder.mkdir()
  marks.mkdir()
  name = {"checkpoint": "big.npz", "state": "big.state.npz", "infer": "out.tsv"}[kind]
  target = folder / name
  target.write_bytes(b"the previous good file\n" * 1000)  # What a kill must never cost.
  good = _sha(target)
  proc = _start(CODES[kind], kind, target, point, marks)
  grows = folder / f"{name}.partial" if kind == "infer" and point.endswith("%") else None
  _kill_at(proc, point, marks, grows, folder, name, SIZES[kind])
  if kind == "infer" and point == "unlink":  # OUT was complete: the new one is in place.
    assert _sha(target) != good and (folder / f"{name}.partial").exists()
  else:
    assert _sha(target) == good, "the previous file changed"
  left = _temps(folder, name)
  assert left or point == "30%" or kind == "infer" and point == "unlink"
  if kind == "infer":  # The same command again: resumes, sweeps, finishes whole.
    again = _start(CODES[kind], kind, target, "none", marks)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    reference = tmp_path / "ref"
    reference.mkdir()
    whole = _start(CODES[kind], kind, reference / name, "none", marks)
    assert whole.wait(timeout=600) == 0
    assert _sha(target) == _sha(reference / name)
    assert sorted(p.name for p in folder.iterdir()) == [name]
    return
  files.check_writable(target, kind)  # What every writer does first: the leftovers go.
  assert sorted(p.name for p in folder.iterdir()) == [name] and _sha(target) == good
