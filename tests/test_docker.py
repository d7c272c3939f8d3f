"""The container files without a Docker engine: linters, and the scripts' arguments
with the engine stubbed (DOCKER points at a script that prints its arguments)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from testing import tool_path

ROOT = Path(__file__).resolve().parents[1]
RUN, BUILD = ROOT / "bin" / "docker-run.sh", ROOT / "bin" / "docker-build.sh"
WORK = "/workspace/palijudge"


def _lint(name: str, *args) -> None:
  exe = tool_path(name)
  proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_dockerfile():
  _lint("hadolint", ROOT / "Dockerfile")


def test_shellcheck_scripts():
  _lint("shellcheck", RUN, BUILD)


def test_dockerfile_contents():
  text = (ROOT / "Dockerfile").read_text()
  base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
  assert re.fullmatch(r"nvcr\.io/nvidia/jax:\d\d\.\d\d-py3", base), base  # pinned, not latest
  assert "FROM ${BASE_IMAGE}" in text
  assert "XLA_PYTHON_CLIENT_PREALLOCATE=false" in text
  # The platform allocator is opt-in (much slower): never set by the image itself.
  assert not re.search(r"^\s*XLA_PYTHON_CLIENT_ALLOCATOR=", text, re.M)
  assert "VENV=/opt/palijudge" in text and '"$VENV/.frozen"' in text
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
  # The whole project folder: files beside the data folders (data.tsv, out.tsv) are seen too.
  assert f"{project}:{WORK}" in mounts
  assert all((project / d).is_dir() for d in ("cache", "dataset", "checkpoints", "experiments"))
  kaggle = stub["HOME"] + "/.kaggle/kaggle.json:/run/secrets/kaggle/kaggle.json:ro"
  assert kaggle in mounts
  envs = _pairs(argv, "--env")
  assert "KAGGLE_CONFIG_DIR=/run/secrets/kaggle" in envs and "KAGGLE_USERNAME" in envs
  assert "secret-key" not in " ".join(argv)  # passed by name only
  assert not any(e.startswith("XLA_PYTHON_CLIENT_ALLOCATOR") for e in envs)  # opt-in


def test_run_options(stub, tmp_path):
  (tmp_path / "ads").mkdir()
  argv = _run(RUN, "--project", tmp_path, "--no-gpu", "--image", "pj:2", "--no-kaggle",
              "--platform-allocator", "-v", str(tmp_path / "ads") + ":/data:ro",
              "-e", "JAX_PLATFORMS=cpu", "--", "--version", env=stub).stdout.splitlines()
  assert "--gpus" not in argv and argv[-2:] == ["pj:2", "--version"]
  mounts = _pairs(argv, "--volume")
  assert f"{tmp_path}/ads:/data:ro" in mounts
  assert not any("kaggle" in m for m in mounts)
  assert {"JAX_PLATFORMS=cpu", "XLA_PYTHON_CLIENT_ALLOCATOR=platform"} <= set(_pairs(argv, "--env"))
  argv = _run(RUN, "--project", tmp_path, env=stub).stdout.splitlines()
  assert argv[-1] == "palijudge:latest"  # no command: the image's bash


def test_run_starts_in_the_callers_folder(stub, tmp_path):
  (tmp_path / "runs" / "a").mkdir(parents=True)
  proc = subprocess.run(["bash", str(RUN), "--project", str(tmp_path), "ls"], capture_output=True,
                        text=True, env=stub, cwd=tmp_path / "runs" / "a", timeout=60,
                        stdin=subprocess.DEVNULL)
  assert _pairs(proc.stdout.splitlines(), "--workdir") == [f"{WORK}/runs/a"]
  # Relative extra volumes are made absolute from the caller's folder.
  proc = subprocess.run(["bash", str(RUN), "--project", str(tmp_path), "-v", "..:/up", "ls"],
                        capture_output=True, text=True, env=stub, cwd=tmp_path / "runs" / "a",
                        timeout=60, stdin=subprocess.DEVNULL)
  assert f"{tmp_path}/runs:/up" in _pairs(proc.stdout.splitlines(), "--volume")


@pytest.fixture
def msys(stub, tmp_path):
  """A Git Bash / MSYS2 shell: MSYSTEM set, cygpath and winpty stubs, the engine printing its env."""
  tools = tmp_path / "msys-bin"
  tools.mkdir()
  (tools / "cygpath").write_text('#!/bin/sh\n[ "$1" = -m ] && printf "C:/msys64%s\\n" "$2"\n')
  (tools / "winpty").write_text('#!/bin/sh\necho winpty\nexec "$@"\n')
  engine = tmp_path / "docker-stub"
  engine.write_text('#!/bin/sh\necho "PATHCONV=$MSYS_NO_PATHCONV EXCL=$MSYS2_ARG_CONV_EXCL"\n'
                    'printf "%s\\n" "$@"\n')
  for f in (tools / "cygpath", tools / "winpty", engine):
    f.chmod(0o755)
  return dict(stub, MSYSTEM="MINGW64", PATH=f"{tools}:{os.environ['PATH']}")


def test_run_under_msys2(msys, tmp_path):
  project = tmp_path / "proj"
  project.mkdir()
  (tmp_path / "ads").mkdir()
  out = _run(RUN, "--project", project, "-v", f"{tmp_path}/ads:/data", "-v", "D:/ads:/d2:ro",
             "python", "/workspace/palijudge/playground/04-validate.py", env=msys).stdout
  lines = out.splitlines()
  assert lines[0] == "PATHCONV=1 EXCL=*"  # container paths reach docker.exe unconverted
  mounts = _pairs(lines, "--volume")
  assert f"C:/msys64{project}:{WORK}" in mounts  # host side as Docker Desktop wants it
  assert f"C:/msys64{tmp_path}/ads:/data" in mounts and "D:/ads:/d2:ro" in mounts
  assert "--user" not in lines and lines[-1] == "/workspace/palijudge/playground/04-validate.py"
  assert "winpty" not in lines and "--tty" not in lines  # no terminal in a test
  # mintty: stdin is a pipe to docker.exe; winpty gives it a terminal.
  out = _run(RUN, "--project", project, env=dict(msys, TERM_PROGRAM="mintty")).stdout.splitlines()
  assert out[0] == "winpty" and "--tty" in out
  out = _run(RUN, "--project", project, "--no-tty", env=dict(msys, TERM_PROGRAM="mintty")
             ).stdout.splitlines()
  assert "winpty" not in out and "--tty" not in out


def test_scripts_keep_lf_line_ends_on_windows_checkouts():
  attrs = (ROOT / ".gitattributes").read_text()
  for pattern in ("*.sh text eol=lf", "*.py text eol=lf", "Makefile text eol=lf"):
    assert pattern in attrs
  for script in [*ROOT.glob("bin/*.sh"), ROOT / "Makefile", ROOT / "playground" / "02-shuffle_data.sh"]:
    assert b"\r" not in script.read_bytes(), script


@pytest.mark.parametrize("args, needle", [
    (["--bogus", "true"], "unknown option: --bogus"),
    (["--image"], "--image needs a value"),
    (["--image", "", "true"], "--image needs a name, got an empty one"),
    (["--kaggle", "/nonexistent/kaggle.json", "true"], "Kaggle credentials not found"),
    (["--project", "/nonexistent/proj", "true"], "project folder not found"),
    (["-v", "/nonexistent/x:/x", "true"], "--volume folder not found"),
    (["-v", "relative", "true"], "--volume wants HOST:CONTAINER"),

    (["--memlock", "maybe", "true"], "--memlock wants auto, on or off"),
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


@pytest.fixture
def strict_engine(stub, tmp_path):
  """An engine that refuses to raise the locked-memory limit, as a rootless or restricted one does
  ("error setting rlimit type 8"), and otherwise prints its arguments."""
  exe = tmp_path / "docker-strict"
  exe.write_text('#!/bin/sh\ncase "$*" in *memlock=-1*)\n'
                 '  echo "docker: Error response from daemon: ... error setting rlimit type 8: '
                 'operation not permitted: unknown" >&2; exit 125;;\nesac\n'
                 'printf "%s\\n" "$@"\n')
  exe.chmod(0o755)
  return dict(stub, DOCKER=str(exe))


def test_memlock_is_dropped_with_a_note_where_the_engine_refuses_it(strict_engine, tmp_path):
  proc = _run(RUN, "--project", tmp_path, "--no-gpu", "make", "demo", env=strict_engine)
  argv = proc.stdout.splitlines()
  assert argv[0] == "run" and argv[-2:] == ["make", "demo"]
  assert "memlock=-1" not in argv and "stack=67108864" in _pairs(argv, "--ulimit")
  assert "may not raise the locked-memory limit" in proc.stderr
  # --memlock on insists (the engine's own error then stops the run); off never asks.
  proc = _run(RUN, "--project", tmp_path, "--memlock", "on", "true", env=strict_engine, check=False)
  assert proc.returncode == 125 and "rlimit type 8" in proc.stderr
  proc = _run(RUN, "--project", tmp_path, "--memlock", "off", "true", env=strict_engine)
  assert "memlock=-1" not in proc.stdout and proc.stderr == ""


def test_memlock_is_kept_where_the_engine_allows_it(stub, tmp_path):
  argv = _run(RUN, "--project", tmp_path, "true", env=stub).stdout.splitlines()
  assert "memlock=-1" in _pairs(argv, "--ulimit")
