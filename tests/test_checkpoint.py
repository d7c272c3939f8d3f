"""palijudge.checkpoint: big_vision layout, round trips, dtypes and refusals (nothing unpickled)."""

from __future__ import annotations

import os
import re
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from palijudge import checkpoint
from palijudge import params as params_lib
from palijudge.errors import UserError
from palijudge.model import paligemma as model_lib

from testing import FIXTURES, f32, load_fixture_model


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
  _, params, shapes = pg1_tiny
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


def test_hostile_checkpoint_files_are_one_line_errors(tmp_path):
  """Every part of a checkpoint is untrusted: empty, not a zip, a .npy, bad side entries."""
  from palijudge.errors import UserError
  cases = {"empty.npz": b"", "text.npz": b"not a zip at all"}
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
  np.save(tmp_path / "array.npy", np.zeros(3))
  (tmp_path / "array.npy").rename(tmp_path / "single.npz")
  bad = {"meta.npz": {checkpoint.META_KEY: np.frombuffer(b"{not json", np.uint8)},
         "list.npz": {checkpoint.META_KEY: np.frombuffer(b"[1, 2]", np.uint8)},
         "float.npz": {checkpoint.META_KEY: np.zeros(3, np.float32)},
         "config.npz": {checkpoint.CONFIG_KEY: np.frombuffer(b"\xff\xfe", np.uint8)}}
  for name, arrays in bad.items():
    np.savez(tmp_path / name, **arrays)
  for name in [*cases, "single.npz", *bad]:
    with pytest.raises(UserError, match=name):
      checkpoint.read_meta(tmp_path / name)
      checkpoint.read_config(tmp_path / name)


def test_numpys_advice_to_load_unsafely_is_never_shown(tmp_path, pg1_tiny):
  """A random, text or pickle file named .npz, and an object array inside a real one."""
  import pickle
  _, _, shapes = pg1_tiny
  files_ = {"random.npz": np.random.default_rng(0).bytes(4096),
            "text.npz": b"just some text, not an archive\n",
            "pickled.npz": pickle.dumps({"a": 1})}
  for name, data in files_.items():
    (tmp_path / name).write_bytes(data)
  load = lambda p: checkpoint.load_params(p, shapes, f32)  # noqa: E731
  cases = [(tmp_path / n, fn) for n in files_ for fn in (checkpoint.read_meta, load)]
  for path, fn in cases + [(_pickle_checkpoint(tmp_path)[0], load)]:
    with pytest.raises(UserError) as e:
      fn(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg, msg
    assert "allow_pickle" not in msg and "unsafe" not in msg and "trust" not in msg, msg
