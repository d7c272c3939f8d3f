"""Several processes (jax.distributed) on this machine: shares, gathers, training, failures.

The whole-script tests launch 2 processes on localhost, each with 2 forced CPU
devices and gloo collectives, the coordinator on a free loopback port, and
compare them with one process holding 4 devices: losses, the saved
checkpoint and the Result blocks. They share one project folder, so the
single-process runs reuse compiled code. Every subprocess has a
hard timeout; a process that dies must stop the other (heartbeats, 10 s here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from palijudge import distributed
from palijudge.experiments.records import RunRecord
from palijudge.files import Project
from testing import PLAY, assert_one_line_error, load_npz, run_script

LIMIT = 240  # Seconds any one launched process may run.
# The recipe every run here trains: Adam moves the tiny model enough that no
# two p(yes) of opposite labels are within float noise (ranking metrics agree).
RECIPE = ("-d", "set1", "--model", "tiny", "--steps", "8", "--batch", "4", "--optimizer",
          "adam", "--lr", "0.003", "--print-every", "1", "--json")


def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Launch:
  """N processes of one command on localhost, each told its place in the run."""

  def __init__(self, command: list[str], folder: Path, cwd: Path, n: int = 2, devices: int = 2):
    folder.mkdir(exist_ok=True)
    port = _free_port()
    self.out = [folder / f"p{i}.out" for i in range(n)]
    self.err = [folder / f"p{i}.err" for i in range(n)]
    self.procs = []
    for i in range(n):
      flags = ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
               "--process-id", str(i), "--heartbeat-timeout", "10"]
      with open(self.out[i], "w") as out, open(self.err[i], "w") as err:
        self.procs.append(subprocess.Popen(command + flags, stdout=out, stderr=err,
                                           env=_env(devices), cwd=cwd))

  def wait(self, limit: float = LIMIT) -> list[int]:
    """Every process's exit status; kills all of them (and fails) past `limit` seconds."""
    deadline = time.monotonic() + limit
    try:
      return [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in self.procs]
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"processes still running after {limit} s:\n{self.log()}")

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def stdout(self, i: int = 0) -> str:
    return self.out[i].read_text()

  def log(self) -> str:
    return "\n".join(f"--- process {i}\n{o.read_text()[-3000:]}\n{e.read_text()[-3000:]}"
                     for i, (o, e) in enumerate(zip(self.out, self.err)))


def _learn(project: Project, *args) -> list[str]:
  return [sys.executable, str(PLAY / "03-do_learn.py"), "--project", str(project.root),
          *RECIPE, *args]


# --- Without a model: the share and gather helpers, one process and two --------

def test_one_process_takes_the_whole_set_and_gathers_nothing():
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  assert not distributed.active() and distributed.is_main()
  assert distributed.block(5) == slice(0, 5)
  values = np.arange(5, dtype=np.float32)
  np.testing.assert_array_equal(distributed.gather(values, 5), values)
  assert distributed.gather_texts(["yes", "no"], 2) == ["yes", "no"]
  mesh = Mesh(np.array(jax.devices()), ("data",))
  assert distributed.batch_rows(NamedSharding(mesh, P("data")), 4) == slice(0, 4)
  tree = {"a": jax.numpy.ones(3)}
  assert distributed.local(tree) is tree


@pytest.mark.parametrize("args,env,needle", [
    (["--coordinator", "127.0.0.1:1"], {}, "need --distributed"),
    (["--distributed"], {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "one"},
     "JAX_PROCESS_ID='one' is not an integer"),
])
def test_bad_process_settings_are_one_line_errors(tmp_project, args, env, needle):
  proc = run_script("02-shuffle_data.py", "-v", "6", "-n", "x", *args, project=tmp_project,
                    check=False, env=env, timeout=120)
  assert_one_line_error(proc, needle)


HELPERS = textwrap.dedent("""
  import json, sys
  from palijudge import distributed
  distributed.initialize(sys.argv[1], 2, int(sys.argv[2]), heartbeat_s=10)
  import jax, numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  me = jax.process_index()
  mesh = Mesh(np.array(jax.devices()), ("data",))
  data = NamedSharding(mesh, P("data"))
  rows = distributed.batch_rows(data, 8)
  full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  batch = distributed.global_batch({"x": full[rows]}, data, 8)
  total = jax.jit(lambda b: b["x"].sum(), out_shardings=NamedSharding(mesh, P()))(batch)
  split = jax.device_put(np.arange(8.0), data)
  out = {"rows": [rows.start, rows.stop], "total": float(total),
         "host": distributed.host({"s": split})["s"].tolist(),
         "local": np.asarray(distributed.local(split)).tolist()}
  for n in (5, 1):  # Uneven blocks; a process with an empty block.
    mine = list(range(n))[distributed.block(n)]
    out[f"gather{n}"] = distributed.gather(np.array(mine, np.float32), n).tolist()
    out[f"texts{n}"] = distributed.gather_texts([f"a{'b' * i}" for i in mine], n)
  from palijudge import train  # A train state split over both processes, saved whole.
  state = train.TrainState(jax.device_put(np.int32(3), NamedSharding(mesh, P())),
                           {"w": jax.device_put(np.arange(16.0).reshape(8, 2), data)}, ())
  train.save_state(sys.argv[3], state, {"step": 3})
  print("OUT " + json.dumps(out))
""")


def _two_processes(script: Path, arg, timeout: float) -> list[dict]:
  """Runs `script COORDINATOR INDEX ARG` as processes 0 and 1 (2 devices each) and returns
  the JSON each prints on its `OUT ` line, in process order."""
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{port}", str(i), str(arg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(2)) for i in range(2)]
  outs = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=timeout)
      line = next((x for x in stdout.splitlines() if x.startswith("OUT ")), None)
      assert p.returncode == 0 and line, stdout + stderr
      outs.append(json.loads(line[4:]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


@pytest.mark.script
def test_two_processes_share_batches_and_gather_sets(tmp_path):
  script = tmp_path / "helpers.py"
  script.write_text(HELPERS)
  saved = tmp_path / "state.npz"
  outs = _two_processes(script, saved, timeout=120)
  assert [o["rows"] for o in outs] == [[0, 4], [4, 8]]
  for o in outs:
    assert o["total"] == float(np.arange(24).sum())
    assert o["host"] == o["local"] == list(range(8))
    assert o["gather5"] == [0, 1, 2, 3, 4]
    assert o["texts5"] == ["a", "ab", "abb", "abbb", "abbbb"]
    assert o["gather1"] == [0] and o["texts1"] == ["a"]
  from palijudge import train
  like = train.TrainState(np.int32(0), {"w": np.zeros((8, 2), np.float32)}, ())
  state, info = train.load_state(str(saved), like)
  assert int(state.step) == 3 and info["step"] == 3
  np.testing.assert_array_equal(state.params["w"], np.arange(16.0).reshape(8, 2))


MESHES = textwrap.dedent("""
  # 2 processes x 2 devices: each --mesh policy's shape, what each process holds after
  # loading, and the local view evaluation uses (no copy when FSDP stays inside a process).
  import json, sys
  from palijudge import distributed
  distributed.initialize(sys.argv[1], 2, int(sys.argv[2]), heartbeat_s=10)
  import jax, numpy as np
  from palijudge import loader
  from palijudge import params as params_lib
  spec = loader.resolve("tiny", cache_dir=sys.argv[3])
  out = {}
  for policy in ("fsdp", "replicated", "2x2", "1x4"):
    mesh = loader.placement(spec.cfg, policy, devices=jax.devices())
    lm = loader.load(spec, mesh=mesh)
    held = sum(params_lib.device_bytes(lm.params).values())
    local = distributed.local(lm.params)
    leaf = local["llm"]["embedder"]["input_embedding"]
    out[policy] = {"mesh": list(mesh.devices.shape),
                   "rows": [[d.process_index for d in row] for row in mesh.devices],
                   "share": held / params_lib.nbytes(lm.params),
                   "local": type(leaf).__name__,
                   "local_devices": len(getattr(leaf, "sharding", None).device_set)
                   if hasattr(leaf, "sharding") else 0}
  print("OUT " + json.dumps(out))
""")


@pytest.mark.script
def test_two_processes_lay_parameters_on_a_2d_mesh(tiny_project, tmp_path):
  """fsdp: FSDP inside each process (host), data parallel across them, each process holding
  half a copy on each of its devices; an explicit 1x4 crosses processes, and evaluation's
  local view then gathers."""
  script = tmp_path / "meshes.py"
  script.write_text(MESHES)
  outs = _two_processes(script, tiny_project.cache, timeout=LIMIT)
  for o in outs:
    # FSDP groups are a process's own devices; the data axis runs across processes.
    assert o["fsdp"]["mesh"] == [2, 2] and o["fsdp"]["rows"] == [[0, 0], [1, 1]]
    assert o["2x2"]["rows"] == [[0, 0], [1, 1]]
    assert o["replicated"]["mesh"] == [4, 1] and o["1x4"]["mesh"] == [1, 4]
    # Each process holds one whole copy over its 2 devices (half on each), or 2 copies.
    assert o["fsdp"]["share"] == pytest.approx(1.0, rel=0.05)
    assert o["replicated"]["share"] == pytest.approx(2.0)
    assert o["1x4"]["share"] == pytest.approx(0.5, rel=0.05)
    # Evaluation's view: the same shards, over the process's own 2 devices.
    assert o["fsdp"]["local"] == "ArrayImpl" and o["fsdp"]["local_devices"] == 2
    assert o["replicated"]["local_devices"] == 2
    assert o["1x4"]["local"] == "ndarray"  # Split across processes: gathered whole.


# --- The training script: 2 processes against 1 ------------------------------------

@pytest.fixture(scope="module")
def project(tiny_project, tmp_path_factory):
  """One writable copy of the tiny project for every run here (one compilation cache)."""
  root = tmp_path_factory.mktemp("distributed") / "project"
  shutil.copytree(tiny_project.root, root,
                  ignore=shutil.ignore_patterns("experiments", "checkpoints", "features"))
  return Project.at(root)


def _one_process(project: Project, *args, script: str = "03-do_learn.py", check: bool = True):
  """The single-process run: 4 devices in one process."""
  return run_script(script, *RECIPE, *args, project=project, timeout=LIMIT, check=check,
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})


def _results(stdout: str) -> tuple[list[str], list[dict]]:
  """(the Result blocks' exact lines, the JSON lines) of a run's output."""
  exact = [line for line in stdout.splitlines()
           if line.startswith("Result:") or re.match(r"  (Tp=|accuracy:|precision:|recall:|"
                                                     r"F-measure:|threshold:)", line)]
  return exact, [json.loads(line) for line in stdout.splitlines() if line.startswith('{"file"')]


def _losses(project: Project, stdout: str) -> dict[int, float]:
  """step -> loss, from the run record the run printed."""
  path = re.search(r"^record: (.+)$", stdout, re.M).group(1)
  return {int(s["step"]): s["loss"] for s in RunRecord.load(project.root / path).steps()}


def _assert_same_run(project: Project, name: str, stdout: str, reference: str) -> None:
  """Result blocks, losses and checkpoint of `name` match the reference run's."""
  exact, numbers = _results(stdout)
  ref_exact, ref_numbers = _results(reference)
  assert len(ref_exact) == 6 * 7 and exact == ref_exact  # 6 Result blocks.
  assert len(numbers) == len(ref_numbers) == 6
  for got, want in zip(numbers, ref_numbers):
    assert got.keys() == want.keys()
    for key, value in want.items():
      if isinstance(value, float) or (isinstance(value, list) and value
                                      and isinstance(value[0], float)):
        np.testing.assert_allclose(got[key], value, atol=1e-6, err_msg=f"{want['file']} {key}")
      else:
        assert got[key] == value, (want["file"], key)
  losses, ref_losses = _losses(project, stdout), _losses(project, reference)
  assert len(ref_losses) == 8 and set(losses) <= set(ref_losses) and len(losses) >= 6
  np.testing.assert_allclose([losses[s] for s in losses], [ref_losses[s] for s in losses],
                             rtol=1e-5)
  # Adam divides by small second moments: a few ulps of gradient show a little more.
  ckpt, ref = (load_npz(project.checkpoints / f"{n}.npz") for n in (name, "ref"))
  arrays = [k for k in ref if k.startswith("params/")]
  assert arrays and set(arrays) == {k for k in ckpt if k.startswith("params/")}
  for k in arrays:
    np.testing.assert_allclose(ckpt[k], ref[k], atol=1e-5, err_msg=k)


STOPPER = textwrap.dedent("""
  # 03-do_learn.py, stopped like Ctrl-C right after its first train state is saved.
  import runpy, sys
  sys.path.insert(0, {play!r})
  from palijudge import train
  save = train.save_state
  def save_then_stop(*args, **kwargs):
    save(*args, **kwargs)
    raise KeyboardInterrupt
  train.save_state = save_then_stop
  runpy.run_path({script!r}, run_name="__main__")
""")


@pytest.mark.script
def test_two_processes_train_as_one(project, tmp_path):
  """2 processes x 2 devices = 1 process x 4 devices: data parallel; and FSDP resuming the
  train state a single process saved (one test, so one reference run)."""
  reference = _one_process(project, "-w", "ref").stdout
  run = Launch(_learn(project, "-w", "two-data"), tmp_path / "data", project.root)
  assert run.wait() == [0, 0], run.log()
  _assert_same_run(project, "two-data", run.stdout(0), reference)
  assert "Result:" not in run.stdout(1) and "step:" not in run.stdout(1)  # Process 0 prints.
  assert [r.name for r in project.experiments.iterdir() if r.name.startswith("two-")] \
      == ["two-data"]  # Process 0 alone writes the record.
  # One process (FSDP over its 4 devices) saves the state at step 2 and stops; two
  # processes finish the run (the same flags: --resume refuses another recipe).
  (tmp_path / "stop.py").write_text(STOPPER.format(play=str(PLAY),
                                                   script=str(PLAY / "03-do_learn.py")))
  stopped = _one_process(project, "-w", "two-fsdp", "--fsdp", "--save-every", "2",
                         script=str(tmp_path / "stop.py"), check=False)
  state = project.checkpoints / "two-fsdp.state.npz"
  assert stopped.returncode == 130 and state.exists(), stopped.stderr
  run = Launch(_learn(project, "-w", "two-fsdp", "--fsdp", "--save-every", "2", "--resume"),
               tmp_path / "fsdp", project.root)
  assert run.wait() == [0, 0], run.log()
  assert "resumed from" in run.stdout(0) and "at step 2" in run.stdout(0)
  assert "step:  2/ 8" not in run.stdout(0) and "step:  3/ 8" in run.stdout(0)
  assert not state.exists()  # Saved again at steps 4 and 6 (gathered), removed at the end.
  _assert_same_run(project, "two-fsdp", run.stdout(0), reference)


@pytest.mark.script
@pytest.mark.parametrize("victim,when", [(1, "step:  1/"), (0, "Result:")])
def test_a_killed_process_stops_the_other(project, victim, when, tmp_path):
  """Kill one process mid-run (in training; after the first evaluation): the other
  exits with an error within the heartbeat timeout instead of waiting forever."""
  run = Launch(_learn(project, "-w", f"killed{victim}"), tmp_path, project.root)
  survivor, deadline = 1 - victim, time.monotonic() + LIMIT
  try:
    while when not in run.stdout(0):
      assert time.monotonic() < deadline and run.procs[0].poll() is None, run.log()
      time.sleep(0.2)
    run.procs[victim].kill()
    code = run.procs[survivor].wait(timeout=90)  # Heartbeats of 10 s, with room to spare.
  except subprocess.TimeoutExpired:
    pytest.fail(f"process {survivor} still runs 90 s after process {victim} died:\n{run.log()}")
  finally:
    run.kill()
  err = run.err[survivor].read_text()
  assert code != 0, run.log()
  # JAX's coordination service ends it (heartbeats), or a failed collective does (cli).
  assert any(m in err for m in ("another task died", "detected fatal errors",
                                "another process has probably stopped")), err
  assert not (project.checkpoints / f"killed{victim}.npz").exists()


def test_the_coordinator_address_is_checked_before_any_join():
  assert distributed.check_address("127.0.0.1:1234") == ("127.0.0.1", 1234)
  assert distributed.check_address("[::1]:80") == ("::1", 80)
  assert distributed.check_address("localhost:65535") == ("localhost", 65535)
  from palijudge.errors import UserError
  for bad in ("not_a_host", "host:", ":80", "h:0", "h:65536", "h:x", "[::1]"):
    with pytest.raises(UserError, match="expected HOST:PORT"):
      distributed.check_address(bad)
  with pytest.raises(UserError, match="cannot resolve the host 'no-such-host.invalid'"):
    distributed.check_address("no-such-host.invalid:1")
