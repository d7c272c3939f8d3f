"""Shared test helpers: fixture models, one jitted forward, the tiny project, script runs.

`conftest.py` turns `make_tiny_project` into the session fixtures every test
module shares; `run_script` runs a numbered script as a user does (a
subprocess, `--project` pointing at a test project).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from palijudge import checkpoint
from palijudge.model import config as config_lib
from palijudge.model import paligemma as model_lib

FIXTURES = Path(__file__).parent / "fixtures"
YES_ID, NO_ID, EOS_ID = 14, 13, 1


def f32(_name: str):
  return np.float32


def load_fixture_model(folder: str, config_name: str = "config.json", dtype_for=f32):
  """(cfg, model, params) of a tiny fixture; params are host (numpy) arrays."""
  cfg = config_lib.from_json_file(FIXTURES / folder / config_name)
  params = checkpoint.load_params(FIXTURES / folder / "params.npz",
                                  model_lib.param_shapes(cfg), dtype_for)
  return cfg, model_lib.build(cfg), params


def load_npz(path) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


@functools.partial(jax.jit, static_argnums=0)
def forward_logits(model, params, image, text, mask_ar, mask_input, zimg=None):
  """(zimg, pre_logits, f32 logits) of the training-layout pass, jitted per model."""
  out = model_lib.forward(model, params, model_lib.Inputs(text, mask_ar, mask_input, image, zimg))
  return out.zimg_BxPxD, out.pre_logits_BxTxD, model_lib.text_logits(
      model, params, out.pre_logits_BxTxD)


ROOT = Path(__file__).resolve().parents[1]
PLAY = ROOT / "playground"


def make_tiny_project(root: Path, n: int = 24, seed: int = 3):
  """A project folder: the tiny model in cache/, `n` generated images, the set1 split."""
  from palijudge import loader
  from palijudge.data import examples, splits, synthetic
  from palijudge.files import Project
  project = Project.at(root)
  loader.write_random_model("tiny", str(project.cache), seed=0)
  data = synthetic.make_dataset(project.dataset, n=n, seed=seed)
  rows = examples.read_jsonl(data)
  train, valid = splits.split(rows, 6, 1, stratify=True)
  examples.write_jsonl(project.dataset / "set1" / "train.jsonl", train)
  examples.write_jsonl(project.dataset / "set1" / "valid.jsonl", valid)
  return project


def run_script(script: str, *args, project, check: bool = True, cwd=None, timeout: int = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs playground/`script` on `project` (cwd: the project root unless given)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  proc = subprocess.run([sys.executable, str(PLAY / script), "--project", str(project.root),
                         *map(str, args)], cwd=cwd or project.root, capture_output=True,
                        text=True, env=env, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def in_process(root, monkeypatch, capsys):
  """run(script, *args) -> (exit code, stdout, stderr): a playground script run inside this
  process on the project at `root` (faster than a subprocess; jax is already imported)."""
  import runpy
  monkeypatch.chdir(root)
  monkeypatch.syspath_prepend(str(PLAY))

  def run(name, *args):
    monkeypatch.setattr(sys, "argv", [name, "--project", str(root), *map(str, args)])
    code = 0
    try:
      runpy.run_path(str(PLAY / name), run_name="__main__")
    except SystemExit as e:
      code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err
  return run


def tool_path(name: str) -> str:
  """A binary the `test` extra installs (shellcheck, hadolint): beside this Python (a venv's
  bin/), in its scripts folder, or on PATH. Missing, it is a broken install: the test fails."""
  import shutil
  import sysconfig
  for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
    if (folder / name).is_file() and os.access(folder / name, os.X_OK):
      return str(folder / name)
  found = shutil.which(name)
  assert found, f"{name} not found: it comes with the test extra (make test installs it)"
  return found


def assert_one_line_error(proc, *needles) -> None:
  """Exit status 2, one line on stderr naming each needle, no traceback."""
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  err = proc.stderr.strip()
  assert "Traceback" not in proc.stderr, proc.stderr
  assert len(err.splitlines()) == 1, err
  for needle in needles:
    assert needle in err, (needle, err)
