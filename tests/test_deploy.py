"""deploy/: the Slurm batch script and the Kubernetes manifest for multi-process training.

Without a cluster: the manifest is validated against Kubernetes' schemas
(kubernetes-validate) and checked for what the launch needs; the Slurm script
passes bash -n and shellcheck, runs with a stub `srun` to show the command it
starts, and JAX's own Slurm detection is exercised with the variables srun
sets, for 2 processes on localhost.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from palijudge import distributed
from testing import tool_path

ROOT = Path(__file__).resolve().parents[1]
SLURM, K8S = ROOT / "deploy" / "slurm.sbatch", ROOT / "deploy" / "kubernetes.yaml"
VOLUME = ROOT / "deploy" / "kubernetes-volume.yaml"
K8S_VERSION = "1.30.0"  # The schemas the manifest is checked against.


def _manifest(path: Path = K8S) -> dict[str, dict]:
  docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
  return {d["kind"]: d for d in docs}


def test_manifest_is_valid_kubernetes():
  import kubernetes_validate as kv
  docs = _manifest()
  assert set(docs) == {"Service", "Job"}
  assert set(_manifest(VOLUME)) == {"PersistentVolumeClaim"}  # Kept apart: data outlive runs.
  for doc in [*docs.values(), *_manifest(VOLUME).values()]:
    kv.validate(doc, K8S_VERSION, strict=True)
  broken = copy.deepcopy(docs["Job"])  # The validator does refuse a misspelt field.
  broken["spec"]["completionsMode"] = broken["spec"].pop("completionMode")
  with pytest.raises(kv.ValidationError):
    kv.validate(broken, K8S_VERSION, strict=True)


def _env(container: dict) -> dict[str, dict]:
  return {e["name"]: e for e in container["env"]}


def test_manifest_starts_one_process_per_pod_that_find_each_other():
  docs = _manifest()
  svc, job = docs["Service"], docs["Job"]
  spec, pod = job["spec"], job["spec"]["template"]["spec"]
  [container] = pod["containers"]
  env = _env(container)
  n = int(env[distributed.ENV_COUNT]["value"])
  assert n >= 2 and spec["completionMode"] == "Indexed"
  assert spec["completions"] == spec["parallelism"] == n  # Every process at once.
  assert pod["restartPolicy"] == "Never"
  # Bad input fails the Job at once; evictions do not count; other failures restart every
  # pod (the others stop on their own), which resumes the saved train state.
  rules = spec["podFailurePolicy"]["rules"]
  assert {"action": "FailJob", "onExitCodes": {"containerName": "train", "operator": "In",
                                                "values": [2]}} in rules
  assert any(r["action"] == "Ignore" and r["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
             for r in rules)
  assert spec["backoffLimit"] >= 1
  # Pod 0 through the headless Service: JOB-0.SERVICE.
  assert svc["spec"]["clusterIP"] == "None" and pod["subdomain"] == svc["metadata"]["name"]
  assert svc["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
  host, port = env["JAX_COORDINATOR_ADDRESS"]["value"].rsplit(":", 1)
  assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
  assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
  assert int(port) in {p["containerPort"] for p in container["ports"]}
  index = env[distributed.ENV_ID]["valueFrom"]["fieldRef"]["fieldPath"]
  assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
  # The palijudge image: its code, nothing installed at start; the script joins the run and
  # waits for pods still being scheduled; a restarted run continues its train state.
  assert container["image"].endswith("/palijudge:latest") and "args" not in container
  command = container["command"]
  assert command[:3] == ["python3", "playground/03-do_learn.py", "--distributed"]
  assert "pip" not in " ".join(command) and "--resume" in command and "--save-every" in command
  assert int(command[command.index("--init-timeout") + 1]) >= 600
  assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
  # The claim's subfolders over the image's project folder: data, weights and results
  # on shared storage, the code from the image.
  mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] == "project"}
  work = container["workingDir"]
  assert set(mounts) == {f"{work}/{d}" for d in ("cache", "dataset", "checkpoints", "experiments")}
  assert all(m["subPath"] == m["mountPath"].rsplit("/", 1)[1] for m in mounts.values())
  [claim] = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if v["name"] == "project"]
  pvc = _manifest(VOLUME)["PersistentVolumeClaim"]
  assert claim == pvc["metadata"]["name"] and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_slurm_script_passes_bash_n_and_shellcheck():
  subprocess.run(["bash", "-n", str(SLURM)], check=True, timeout=30)
  proc = subprocess.run([tool_path("shellcheck"), str(SLURM)], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def _fresh_copy(dest: Path) -> Path:
  """The files a clone would have (tracked, and new ones git would commit), in `dest`."""
  listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
  for rel in filter(None, listed):
    if (ROOT / rel).is_file():
      (dest / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / rel, dest / rel)
  return dest


def _stubs(folder: Path, backend: str) -> tuple[Path, Path]:
  """(srun stub that records its arguments and environment, python stub reporting `backend`)."""
  folder.mkdir()
  srun = folder / "srun"
  srun.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n'
                  'echo "$JAX_LOCAL_DEVICE_IDS" > "$SRUN_ARGS.ids"\n')
  python = folder / "gpu-python"
  python.write_text(f'#!/usr/bin/env bash\n[ "$1" = -c ] && exec {sys.executable} -c '
                    f'"import sys; sys.exit(0 if \'{backend}\' == \'gpu\' else 3)"\n')
  for f in (srun, python):
    f.chmod(0o755)
  return srun, python


def test_slurm_script_on_a_fresh_clone(tmp_path):
  """With stub srun and python: the log folder exists in a clone, one task per node drives
  every GPU of it, and a python without jax's GPU build stops the job with one line."""
  clone = _fresh_copy(tmp_path / "clone")
  directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SLURM.read_text(), re.M))
  log_dir = clone / Path(directives["output"]).parent
  assert log_dir.is_dir(), "Slurm opens the log before the script runs: its folder must exist"
  assert directives["ntasks-per-node"] == "1" and "gpus-per-task" not in directives
  srun, python = _stubs(tmp_path / "gpu", "gpu")
  out = tmp_path / "args.txt"
  env = dict(os.environ, PATH=f"{srun.parent}:{os.environ['PATH']}", SRUN_ARGS=str(out),
             SLURM_SUBMIT_DIR=str(clone), SLURM_GPUS_ON_NODE="4", SET="set2", BATCH="32",
             PALIJUDGE_PYTHON=str(python))
  env.pop("JAX_LOCAL_DEVICE_IDS", None)
  subprocess.run(["bash", str(clone / "deploy/slurm.sbatch"), "--model", "paligemma2-10b-pt-224"],
                 env=env, check=True, timeout=30)
  args = out.read_text().splitlines()
  assert args[:4] == ["--kill-on-bad-exit=1", str(python), "playground/03-do_learn.py",
                      "--distributed"]
  assert " ".join(args[4:]) == "-d set2 -w trained-set2 --batch 32 --model paligemma2-10b-pt-224"
  assert Path(f"{out}.ids").read_text().strip() == "0,1,2,3"
  assert (clone / "experiments").is_dir() and (clone / "checkpoints").is_dir()
  # The default environment is the project's .venv; without jax's GPU build: one line, exit 2.
  cpu_srun, cpu_python = _stubs(tmp_path / "cpu", "cpu")
  out.unlink()
  proc = subprocess.run(["bash", str(clone / "deploy/slurm.sbatch")], capture_output=True,
                        text=True, timeout=30, env=dict(env, PALIJUDGE_PYTHON=str(cpu_python)))
  assert proc.returncode == 2 and not out.exists()
  assert len(proc.stderr.strip().splitlines()) == 1 and "make setup ACCEL=cuda12" in proc.stderr
  assert "python=${PALIJUDGE_PYTHON:-.venv/bin/python}" in SLURM.read_text()


DETECT = ("import json; from palijudge import distributed; distributed.initialize(); import jax; "
          "print(json.dumps([jax.process_index(), jax.process_count(), len(jax.devices())]))")


@pytest.mark.script
def test_jax_detects_the_run_from_the_variables_srun_sets():
  """`--distributed` with nothing else under srun: 2 tasks on this host, as Slurm starts them."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  base = {k: v for k, v in os.environ.items()
          if not k.startswith(("JAX_", "SLURM_", "OMPI_", "PMI_"))}
  procs = []
  for i in range(2):
    env = dict(base, JAX_PLATFORMS="cpu", JAX_COORDINATOR_PORT=str(port), SLURM_JOB_ID="4242",
               SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_PROCID=str(i),
               SLURM_LOCALID=str(i), SLURM_STEP_NUM_NODES="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs.append(subprocess.Popen([sys.executable, "-c", DETECT], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  got = []
  for p, (stdout, stderr) in zip(procs, outs):
    assert p.returncode == 0, stdout + stderr
    got.append(json.loads(stdout.strip().splitlines()[-1]))
  assert got == [[0, 2, 4], [1, 2, 4]]
