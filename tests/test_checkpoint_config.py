"""Checkpoints (big_vision layout, round trips, refusals), configs and the trainable split."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from palijudge import checkpoint
from palijudge.model import config as config_lib
from palijudge.model import paligemma as model_lib
from palijudge.errors import UserError
from palijudge import params as params_lib

from testing import FIXTURES, f32, load_fixture_model


# Checkpoints -----------------------------------------------------------------

@pytest.fixture(scope="module")
def pg1_tiny():
  cfg, _, params = load_fixture_model("paligemma-tiny")
  return cfg, params, model_lib.param_shapes(cfg)


def _kaggle_arrays():
  with np.load(FIXTURES / "paligemma-tiny" / "params.npz") as f:
    return {k: f[k] for k in f.files}


def _assert_same_tree(a, b, dtype=None):
  fa, fb = params_lib.flatten(a), params_lib.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    if dtype is not None:
      assert fa[k].dtype == dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_checkpoint_round_trip(tmp_path, pg1_tiny):
  cfg, params, shapes = pg1_tiny
  path = tmp_path / "ckpt.npz"
  checkpoint.save(path, params, cfg, meta={"step": 3})
  loaded = checkpoint.load_params(path, shapes, f32)
  _assert_same_tree(loaded, params, np.float32)
  assert checkpoint.read_config(path) == cfg
  assert checkpoint.read_meta(path) == {"step": 3}
  assert os.listdir(tmp_path) == ["ckpt.npz"]  # No temporary file left behind.


def test_saved_keys_are_big_vision_layout(tmp_path, pg1_tiny):
  cfg, params, _ = pg1_tiny
  path = tmp_path / "ckpt.npz"
  checkpoint.save(path, params, cfg)
  with np.load(path, allow_pickle=False) as f:
    keys = set(f.files)
  want = {"params/" + k for k in params_lib.flatten(params)}
  assert keys - {checkpoint.CONFIG_KEY, checkpoint.META_KEY} == want
  assert want == set(_kaggle_arrays())  # The same keys as the official layout.
  with zipfile.ZipFile(path) as z:
    assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())


def test_bf16_leaves_round_trip(tmp_path, pg1_tiny):
  cfg, params, shapes = pg1_tiny
  bf16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
  path = tmp_path / "bf16.npz"
  checkpoint.save(path, bf16, cfg)
  back = checkpoint.load_params(path, shapes, lambda _: jnp.bfloat16)
  _assert_same_tree(back, bf16, jnp.bfloat16)
  # Read as f32, the stored bf16 values come back exactly (not as raw bytes).
  up = checkpoint.load_params(path, shapes, f32)
  _assert_same_tree(up, jax.tree.map(lambda a: np.asarray(a, np.float32), bf16), np.float32)
  # save(dtype=...) casts on the way out, leaf by leaf.
  checkpoint.save(tmp_path / "cast.npz", params, cfg, dtype=ml_dtypes.bfloat16)
  _assert_same_tree(checkpoint.load_params(tmp_path / "cast.npz", shapes, lambda _: jnp.bfloat16),
                    bf16, jnp.bfloat16)


def test_official_layout_and_unprefixed_keys_load(tmp_path, pg1_tiny):
  cfg, params, shapes = pg1_tiny
  arrays = _kaggle_arrays()
  assert checkpoint.read_config(FIXTURES / "paligemma-tiny" / "params.npz") is None
  assert checkpoint.read_meta(FIXTURES / "paligemma-tiny" / "params.npz") == {}
  np.savez(tmp_path / "bare.npz", **{k[len("params/"):]: v for k, v in arrays.items()})
  _assert_same_tree(checkpoint.load_params(tmp_path / "bare.npz", shapes, f32), params)
  # Per-leaf dtypes: the frozen/trainable mix the trainer uses.
  mixed = checkpoint.load_params(tmp_path / "bare.npz", shapes,
                                 lambda n: np.float32 if n.startswith("llm/") else np.float16)
  flat = params_lib.flatten(mixed)
  assert {v.dtype for k, v in flat.items() if k.startswith("img/")} == {np.dtype(np.float16)}
  assert {v.dtype for k, v in flat.items() if k.startswith("llm/")} == {np.dtype(np.float32)}


BAD_KEY = "llm/layers/attn/kv_einsum/w"


@pytest.mark.parametrize("kind", ["misshaped", "missing", "unexpected"])
def test_bad_checkpoint_names_the_key(tmp_path, pg1_tiny, kind):
  _, _, shapes = pg1_tiny
  arrays = _kaggle_arrays()
  if kind == "misshaped":
    arrays["params/" + BAD_KEY] = arrays["params/" + BAD_KEY][..., :-1]
    name = BAD_KEY
  elif kind == "missing":
    del arrays["params/" + BAD_KEY]
    name = BAD_KEY
  else:
    name = "llm/layers/attn/extra/w"
    arrays["params/" + name] = np.zeros(3, np.float16)
  path = tmp_path / f"{kind}.npz"
  np.savez(path, **arrays)
  with pytest.raises(UserError) as e:
    checkpoint.load_params(path, shapes, f32)
  assert name in str(e.value) and str(path) in str(e.value)
  assert "\n" not in str(e.value)


class _Trap:
  """Unpickling this creates `marker`: proof that something got unpickled."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def _pickle_checkpoint(tmp_path):
  arrays = _kaggle_arrays()
  marker = tmp_path / "unpickled"
  arrays["params/llm/final_norm/scale"] = np.array([_Trap(marker)], dtype=object)
  path = tmp_path / "pickle.npz"
  np.savez(path, **arrays)  # np.savez pickles object arrays.
  return path, marker


def test_pickled_object_array_is_never_unpickled(tmp_path, pg1_tiny):
  _, _, shapes = pg1_tiny
  path, marker = _pickle_checkpoint(tmp_path)
  with pytest.raises((UserError, ValueError)):
    checkpoint.load_params(path, shapes, f32)
  assert not marker.exists()
  # The trap does work: reading the member with pickling allowed springs it.
  with np.load(path, allow_pickle=True) as f:
    f["params/llm/final_norm/scale"]
  assert marker.is_dir()


def test_pickled_object_array_gives_user_error(tmp_path, pg1_tiny):
  _, _, shapes = pg1_tiny
  path, marker = _pickle_checkpoint(tmp_path)
  with pytest.raises(UserError):
    checkpoint.load_params(path, shapes, f32)
  assert not marker.exists()


def test_unreadable_checkpoints(tmp_path, pg1_tiny):
  _, _, shapes = pg1_tiny
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"this is not a zip archive\n" * 10)
  for fn in (lambda p: checkpoint.load_params(p, shapes, f32), checkpoint.read_config,
             checkpoint.read_meta):
    with pytest.raises(UserError, match=re.escape(str(junk))):
      fn(junk)
    with pytest.raises(UserError, match="not found"):
      fn(tmp_path / "absent.npz")


# Config ----------------------------------------------------------------------

TINY = dict(image_size=56, img=dict(patch_size=14, width=32, depth=2, mlp_dim=128, num_heads=2),
            llm=dict(vocab_size=512, width=64, depth=2, mlp_dim=128, num_heads=2,
                     num_kv_heads=1, head_dim=32))


def _with(**changes):
  raw = json.loads(json.dumps(TINY))
  for path, value in changes.items():
    *head, last = path.split("__")
    d = raw
    for h in head:
      d = d[h]
    d[last] = value
  return raw


@pytest.mark.parametrize("raw,fragment", [
    (_with(colour="red"), "colour"),
    (_with(img__pool_type="map"), "pool_type"),
    (_with(llm__variant="gemma_2b"), "variant"),
    (_with(img__num_heads=3), "num_heads"),
    (_with(llm__num_heads=4, llm__num_kv_heads=3), "num_kv_heads"),
    (_with(image_size=50), "patch_size"),
    (_with(family="gemma3"), "family"),
    (_with(llm__depth=0), "llm.depth"),
    (_with(img__width=True), "img.width"),
    (_with(llm__query_pre_attn_norm="none"), "query_pre_attn_norm"),
    (_with(llm__final_logits_softcap=-1.0), "soft-cap"),
    ([1, 2], "JSON object"),
])
def test_from_dict_rejects(raw, fragment):
  with pytest.raises(UserError, match=re.escape(fragment)):
    config_lib.from_dict(raw, "cfg.json")


def test_fixture_configs_and_family_defaults():
  pg1 = config_lib.from_json_file(FIXTURES / "paligemma-tiny" / "config.json")
  assert pg1 == config_lib.from_dict(TINY)
  assert (pg1.family, pg1.llm.attn_logits_softcap, pg1.llm.post_norms) == ("gemma", 0.0, False)
  assert pg1.llm.final_logits_softcap == 0.0 and pg1.num_patches == 16
  g2 = config_lib.from_dict(_with(family="gemma2"))
  assert g2.llm.attn_logits_softcap == 50.0 and g2.llm.post_norms is True
  assert g2.llm.query_pre_attn_norm == "rsqrt_head_dim"
  assert config_lib.from_dict(_with(family="gemma2", llm__attn_logits_softcap=0.0,
                                    llm__post_norms=False)).llm.post_norms is False
  pg2 = config_lib.from_json_file(FIXTURES / "paligemma2-tiny" / "config.json")
  pg2_30 = config_lib.from_json_file(FIXTURES / "paligemma2-tiny" / "config_softcap30.json")
  assert pg2 == g2
  assert pg2_30.llm == dataclasses.replace(pg2.llm, final_logits_softcap=30.0)


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_presets_are_valid(name):
  cfg = config_lib.preset(name)
  assert cfg.image_size % cfg.img.patch_size == 0
  assert cfg.llm.num_heads % cfg.llm.num_kv_heads == 0
  assert config_lib.from_dict(json.loads(cfg.to_json())) == cfg
  assert (cfg.family == "gemma2") == cfg.llm.post_norms == (cfg.llm.attn_logits_softcap == 50.0)
  assert cfg.num_patches == (cfg.image_size // 14) ** 2


def test_preset_details():
  assert config_lib.preset("paligemma2-28b-pt-224").llm.query_pre_attn_norm == (
      "rsqrt_emb_per_head")
  assert config_lib.preset("paligemma-3b-pt-448").num_patches == 1024
  with pytest.raises(UserError, match="paligemma-3b-pt-224"):
    config_lib.preset("paligemma-7b")


def test_from_json_file_errors(tmp_path):
  bad = tmp_path / "model.json"
  text = '{\n  "image_size": 56,\n  "img": {"patch_size": 14,}\n}\n'
  bad.write_text(text)
  try:
    json.loads(text)
  except json.JSONDecodeError as e:
    line = e.lineno
  assert line == 3
  with pytest.raises(UserError, match=f"^{re.escape(str(bad))}:3: invalid JSON"):
    config_lib.from_json_file(bad)
  with pytest.raises(UserError, match="not found"):
    config_lib.from_json_file(tmp_path / "absent.json")
  bad.write_text(json.dumps(_with(llm__num_layers=3)))
  with pytest.raises(UserError, match=f"^{re.escape(str(bad))}.*num_layers"):
    config_lib.from_json_file(bad)


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
  shapes = model_lib.param_shapes(config_lib.from_dict(TINY))
  with pytest.raises(UserError, match="matches no parameter"):
    params_lib.split(shapes, r"^nothing/")
