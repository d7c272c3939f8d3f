"""loader.py: where a model's parameters go when it is loaded (--mesh), and the device line.

The sharded tests run in a subprocess with 4 or 8 forced CPU devices: each
device's bytes are read after loading, and a model loaded only sharded is
evaluated and must score as the one-device model does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from palijudge import loader
from palijudge.errors import UserError

SHARDED_SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, numpy as np
  from palijudge import loader
  from palijudge import configs
  from palijudge.evaluation import scoring
  from palijudge import params as params_lib
  from palijudge.data import examples
  cache, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
  assert len(jax.devices()) == n
  spec = loader.resolve("tiny", cache_dir=cache)
  out = {}
  for policy in ("fsdp", "replicated"):
    lm = loader.load(spec, mesh=loader.placement(spec.cfg, policy))
    per_device = params_lib.device_bytes(lm.params)
    out[policy] = {"mesh": list(lm.mesh.devices.shape), "bytes": sorted(per_device.values()),
                   "total": params_lib.nbytes(lm.params)}
    if policy == "fsdp":
      rows = examples.read_jsonl(data)[:12]
      res = scoring.evaluate(lm, rows, configs.EvalConfig(eval_batch=6))
      out["fsdp_p"] = res.p_yes.tolist()
      del lm
  one = loader.load(spec, mesh=params_lib.make_mesh(jax.devices()[:1]))
  out["one_p"] = scoring.evaluate(one, rows, configs.EvalConfig(eval_batch=6)).p_yes.tolist()
  print(json.dumps(out))
""")


@pytest.mark.parametrize("n", [4, 8])
def test_fsdp_loads_each_device_with_its_share_and_evaluates(tiny_project, n):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
  proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(tiny_project.cache),
                         str(tiny_project.dataset / "data.jsonl"), str(n)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  fsdp, replicated = out["fsdp"], out["replicated"]
  assert fsdp["mesh"] == [1, n] and replicated["mesh"] == [n, 1]
  # Every device holds about 1/n of the parameters (a few small leaves, such as norms whose
  # size n does not divide, are replicated), never the whole model.
  share = [b / fsdp["total"] for b in fsdp["bytes"]]
  print(f"{n} devices, FSDP: each device holds {min(share):.3f}-{max(share):.3f} of the bytes")
  assert max(share) < 1.25 / n and min(share) > 0.75 / n
  assert replicated["bytes"] == [replicated["total"]] * n  # Replicated: a whole copy each.
  # The model loaded only sharded judges as the one-device model does.
  assert len(out["fsdp_p"]) == 12
  assert max(abs(a - b) for a, b in zip(out["fsdp_p"], out["one_p"])) < 1e-5


def test_placement_on_one_device():
  spec_cfg = loader.config_lib.preset("tiny")
  for policy in ("auto", "fsdp", "replicated"):
    assert loader.placement(spec_cfg, policy).devices.size >= 1
  assert loader.need_bytes(spec_cfg, "attn") > 0
  # LoRA adapters do not exist before training: the estimate still works.
  assert loader.need_bytes(spec_cfg, "lora") > 0


@pytest.mark.parametrize("mesh", ["2x", "big", "0x1"])
def test_bad_mesh_is_refused_before_loading(mesh):
  with pytest.raises(UserError, match="--mesh wants"):
    loader.LoadConfig(mesh=mesh)


def test_the_full_size_models_need_more_than_one_small_gpu():
  """The placement policy's input at full size (by shape, nothing allocated): the 3B
  attention-only recipe fits a 12 GiB card, the 10B and 28B do not."""
  gib = 2 ** 30
  need = {name: loader.need_bytes(loader.config_lib.preset(name), "attn") / gib
          for name in ("paligemma-3b-pt-224", "paligemma2-10b-pt-224", "paligemma2-28b-pt-224")}
  assert need["paligemma-3b-pt-224"] < 0.9 * 12
  assert need["paligemma2-10b-pt-224"] > 12 and need["paligemma2-28b-pt-224"] > 24
