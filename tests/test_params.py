"""palijudge.params: paths, the trainable/frozen split, load dtypes and shardings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import ml_dtypes
import numpy as np
import pytest

from palijudge import checkpoint
from palijudge import params as params_lib
from palijudge.errors import UserError
from palijudge.model import config as config_lib
from palijudge.model import lora
from palijudge.model import paligemma as model_lib

from testing import FIXTURES


def test_flatten_unflatten_round_trip():
  tree = {"img": {"head": {"kernel": 1, "bias": 2}}, "llm": {"final_norm": {"scale": 3}}}
  flat = params_lib.flatten(tree)
  assert flat == {"img/head/kernel": 1, "img/head/bias": 2, "llm/final_norm/scale": 3}
  assert params_lib.unflatten(flat) == tree


# Trainable / frozen split ----------------------------------------------------

@pytest.mark.parametrize("trainable", ["attn", "llm", "all", r"^img/head/"])
def test_split_and_merge_params(trainable):
  cfg = config_lib.from_json_file(FIXTURES / "paligemma2-tiny" / "config.json")
  shapes = model_lib.param_shapes(cfg)
  flat = params_lib.flatten(shapes)
  pattern = re.compile(params_lib.TRAINABLE.get(trainable, trainable))
  tr, fr = params_lib.split(shapes, trainable)
  ftr, ffr = params_lib.flatten(tr), params_lib.flatten(fr)
  assert ftr and all(pattern.search(k) for k in ftr)
  assert not any(pattern.search(k) for k in ffr)
  assert sorted([*ftr, *ffr]) == sorted(flat) and not set(ftr) & set(ffr)
  assert {k for k in flat if pattern.search(k)} == set(ftr)
  merged = params_lib.merge(tr, fr)
  assert params_lib.flatten(merged) == flat
  assert jax.tree.structure(merged) == jax.tree.structure(shapes)
  expected = {
      "attn": {f"llm/layers/attn/{w}/w" for w in ("q_einsum", "kv_einsum", "attn_vec_einsum")},
      "llm": {k for k in flat if k.startswith("llm/")},
      "all": set(flat),
      r"^img/head/": {"img/head/kernel", "img/head/bias"},
  }[trainable]
  assert set(ftr) == expected


def test_split_params_matching_nothing_is_a_user_error():
  shapes = model_lib.param_shapes(
      config_lib.from_json_file(FIXTURES / "paligemma-tiny" / "config.json"))
  with pytest.raises(UserError, match="matches no parameter"):
    params_lib.split(shapes, r"^nothing/")


def test_named_sets():
  assert params_lib.trains_encoder("all") and params_lib.trains_encoder(r"^img/")
  assert not any(params_lib.trains_encoder(s) for s in ("attn", "llm", "lora"))
  assert params_lib.saves_everything("all")
  assert not any(params_lib.saves_everything(s) for s in ("attn", "llm", "lora", ".*"))


# Load dtypes -----------------------------------------------------------------

ATTN_Q, LORA_A, HEAD = ("llm/layers/attn/q_einsum/w", lora.PREFIX + "attn/q_einsum/w/a",
                        "img/head/kernel")


def test_dtype_rule():
  auto = params_lib.dtype_rule("attn")
  assert auto(ATTN_Q) == np.float32 and auto(HEAD) is None  # Frozen: as stored.
  assert auto(LORA_A) is None  # Adapters live under lora/, outside the attn set.
  half = params_lib.dtype_rule("attn", "bfloat16")
  assert half(ATTN_Q) == np.float32 and half(HEAD) == np.dtype(ml_dtypes.bfloat16)
  assert params_lib.dtype_rule("attn", "float16")(HEAD) == np.float16
  assert params_lib.dtype_rule("attn", "float32")(HEAD) == np.float32
  assert params_lib.dtype_rule("all", "float16")(HEAD) == np.float32  # Trainable wins.
  adapters = params_lib.dtype_rule("lora", "bfloat16")
  assert adapters(LORA_A) == np.float32 and adapters(ATTN_Q) == np.dtype(ml_dtypes.bfloat16)
  with pytest.raises(UserError, match="--param-dtype must be one of"):
    params_lib.dtype_rule("attn", "int8")


def test_dtype_rule_keeps_stored_half_precision_when_loading():
  cfg = config_lib.from_json_file(FIXTURES / "paligemma-tiny" / "config.json")
  loaded = checkpoint.load_params(FIXTURES / "paligemma-tiny" / "params.npz",
                                  model_lib.param_shapes(cfg), params_lib.dtype_rule("attn"))
  flat = params_lib.flatten(loaded)
  attn = {k for k in flat if k.startswith("llm/layers/attn/")}
  assert attn and {flat[k].dtype for k in attn} == {np.dtype(np.float32)}
  assert {v.dtype for k, v in flat.items() if k not in attn} == {np.dtype(np.float16)}


# Shardings -------------------------------------------------------------------

def test_one_device_replicates_everything():
  mesh = params_lib.make_mesh(jax.devices()[:1])
  assert mesh.axis_names == ("data", "fsdp") and mesh.devices.shape == (1, 1)
  tree = {"a": np.zeros((8, 4)), "b": jax.ShapeDtypeStruct((16,), np.float32)}
  sh = params_lib.tree_shardings(mesh, tree)
  assert {k: tuple(v.spec) for k, v in sh.items()} == {"a": (), "b": ()}
  assert all(v.mesh == mesh for v in sh.values())
  params_lib.check_batch(3, mesh)
  for policy in ("auto", "fsdp", "replicated", "1x1"):
    assert params_lib.mesh_for(policy, False, jax.devices()[:1]).devices.shape == (1, 1)


@pytest.mark.parametrize("text, shape", [("auto", None), ("fsdp", None), ("replicated", None),
                                         ("2x4", (2, 4)), ("1x8", (1, 8))])
def test_parse_mesh(text, shape):
  assert params_lib.parse_mesh(text) == shape


@pytest.mark.parametrize("text", ["", "2", "2x", "x4", "0x4", "2x0", "-1x2", "2*4", "big", "2x4x1"])
def test_parse_mesh_refuses_the_rest(text):
  with pytest.raises(UserError, match="--mesh wants"):
    params_lib.parse_mesh(text)


SHARDING_SCRIPT = textwrap.dedent("""
  import json
  import jax, numpy as np
  from palijudge import params as p
  from palijudge.errors import UserError
  assert len(jax.devices()) == 4
  tree = {"a": np.zeros((8, 3)), "b": np.zeros((3, 8)), "c": np.zeros((12, 8)),
          "d": np.zeros((3, 5)), "e": np.zeros(()), "f": np.zeros((2,)),
          "g": jax.ShapeDtypeStruct((6, 16, 4), np.float32), "h": np.zeros((4, 4))}
  out = {}
  for fsdp in (False, True):
    mesh = p.mesh_for("fsdp" if fsdp else "replicated", True)
    out[f"shape{fsdp}"] = list(mesh.devices.shape)
    sh = p.tree_shardings(mesh, tree)
    out[str(fsdp)] = {k: list(v.spec) for k, v in sh.items()}
  concrete = {k: v for k, v in tree.items() if k != "g"}
  placed = p.place(concrete, {k: v for k, v in sh.items() if k != "g"})
  out["c_shard"] = list(placed["c"].addressable_shards[0].data.shape)
  out["b_shard"] = list(placed["b"].addressable_shards[0].data.shape)
  p.check_batch(8, mesh)
  try:
    p.check_batch(6, mesh)
    out["check_batch"] = None
  except UserError as e:
    out["check_batch"] = str(e)
  out["auto_fits"] = list(p.mesh_for("auto", True).devices.shape)
  out["auto_too_big"] = list(p.mesh_for("auto", False).devices.shape)
  out["2x2"] = list(p.mesh_for("2x2", True).devices.shape)
  try:
    p.mesh_for("3x2", True)
  except UserError as e:
    out["3x2"] = str(e)
  # Host arrays go straight into their shards; a batch is split over all 4 devices.
  w = np.arange(48, dtype=np.float32).reshape(12, 4)
  placed = p.put(w, p.leaf_sharding(mesh, w.shape))
  out["put_shards"] = [s.data.shape[0] for s in placed.addressable_shards]
  np.testing.assert_array_equal(np.asarray(placed), w)
  rows = p.shard_rows({"x": np.arange(6), "s": np.zeros(())}, mesh)
  out["rows"] = [rows["x"].shape[0], len(rows["x"].sharding.device_set)]
  out["device_bytes"] = sorted(p.device_bytes({"w": placed}).values())
  print(json.dumps(out))
""")


def test_fsdp_splits_the_largest_divisible_axis():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert all(spec == [] for spec in out["False"].values())  # No FSDP: replicated.
  assert out["shapeFalse"] == [4, 1] and out["shapeTrue"] == [1, 4]
  assert out["True"] == {
      "a": ["fsdp"],            # 8 splits 4 ways.
      "b": [None, "fsdp"],      # The largest axis, wherever it is.
      "c": ["fsdp"],            # 12 before 8: the largest axis first.
      "d": [], "e": [],         # Nothing divisible: replicated.
      "f": [],                  # 2 < 4 devices.
      "g": [None, "fsdp"],      # 16 of (6, 16, 4).
      "h": ["fsdp"],            # A tie: the first axis.
  }
  assert out["c_shard"] == [3, 8] and out["b_shard"] == [3, 2]
  assert out["check_batch"] == "batch size 6 must be a multiple of the 4 devices"
  # auto: replicated when the model fits one device, FSDP over the host's devices when not.
  assert out["auto_fits"] == [4, 1] and out["auto_too_big"] == [1, 4] and out["2x2"] == [2, 2]
  assert "--mesh 3x2 needs 6 devices, this run has 4" in out["3x2"]
  assert out["put_shards"] == [3, 3, 3, 3] and out["device_bytes"] == [48, 48, 48, 48]
  assert out["rows"] == [8, 4]  # 6 rows padded to 8, over the 4 devices.
