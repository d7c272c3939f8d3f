"""Model structure, generality and I/O: full-size shapes (eval_shape only), random
tiny configs, grouped-query attention, padding invariance, checkpoints, configs
and the trainable/frozen split."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from palijudge import checkpoint
from palijudge import config as config_lib
from palijudge import model as model_lib
from palijudge import predict
from palijudge import train
from palijudge.errors import UserError

from testing import EOS_ID, FIXTURES, f32, forward_logits, load_fixture_model, load_npz


# Full-size parameter shapes --------------------------------------------------

def _read_shapes(name: str):
  """(name -> shape, totals from the '# key<TAB>value' footer lines)."""
  shapes, totals = {}, {}
  for line in (FIXTURES / name).read_text().splitlines():
    if line.startswith("#"):
      parts = line[1:].strip().split("\t")
      if len(parts) == 2 and parts[1].isdigit():
        totals[parts[0]] = int(parts[1])
      continue
    if not line.strip():
      continue
    key, shape, _dtype, count = line.split("\t")
    shape = tuple(ast.literal_eval(shape))
    assert math.prod(shape) == int(count), line
    shapes[key] = shape
  return shapes, totals


@pytest.mark.parametrize("preset,listing,total,num_arrays", [
    ("paligemma-3b-pt-224", "param_shapes_3b.txt", 2_923_335_408, 32),
    ("paligemma2-3b-pt-224", "param_shapes_pg2_3b.txt", 3_032_094_960, 34),
])
def test_full_size_param_shapes_match_big_vision(preset, listing, total, num_arrays):
  want, totals = _read_shapes(listing)
  shapes = model_lib.param_shapes(config_lib.preset(preset))
  flat = checkpoint.flatten(shapes)
  assert all(isinstance(v, jax.ShapeDtypeStruct) for v in flat.values())  # Nothing allocated.
  got = {k: tuple(v.shape) for k, v in flat.items()}
  assert sorted(got) == sorted(want)  # Name for name ...
  assert got == want  # ... and shape for shape.
  count = lambda pred: sum(math.prod(s) for k, s in got.items() if pred(k))
  assert len(got) == num_arrays == totals["num_arrays"]
  assert count(lambda k: True) == total == totals["total_params"]
  assert count(lambda k: k.startswith("img/")) == totals["img_params"]
  assert count(lambda k: k.startswith("llm/")) == totals["llm_params"]
  trainable, _ = train.split_params(shapes, "attn")
  assert sum(math.prod(v.shape) for v in checkpoint.flatten(trainable).values()) == totals[
      "trainable_llm_layers_attn_params"]


# Random tiny configs ---------------------------------------------------------

def _tiny_config(image_size: int, kv_heads: int, depth: int, family: str, seed: int,
                 **llm_extra) -> config_lib.ModelConfig:
  rng = np.random.default_rng(seed)
  pick = lambda *xs: int(rng.choice(xs))
  return config_lib.from_dict(dict(
      image_size=image_size, family=family,
      img=dict(patch_size=14, width=pick(8, 16, 24), depth=depth, mlp_dim=pick(16, 32),
               num_heads=2),
      llm=dict(vocab_size=pick(48, 64), width=pick(16, 24, 32), depth=depth,
               mlp_dim=pick(32, 48), num_heads=4, num_kv_heads=kv_heads,
               head_dim=pick(4, 8), **llm_extra)))


def _random_text(rng, vocab: int, rows, seqlen: int, pad_ids=None):
  """Right-padded prefix+suffix rows: rows = [(prefix_len, suffix_len), ...]."""
  b = len(rows)
  text = np.zeros((b, seqlen), np.int32) if pad_ids is None else pad_ids.copy()
  mask_ar = np.zeros((b, seqlen), np.int32)
  mask_input = np.zeros((b, seqlen), np.int32)
  for i, (p, s) in enumerate(rows):
    text[i, :p + s] = rng.integers(5, vocab, p + s)
    mask_ar[i, p:p + s] = 1
    mask_input[i, :p + s] = 1
  return text, mask_ar, mask_input


TINY_CASES = [  # image size, kv heads (4 = fused qkv_einsum), depth, family, extras
    (28, 1, 1, "gemma", {}),
    (42, 2, 2, "gemma2", dict(final_logits_softcap=30.0,
                              query_pre_attn_norm="rsqrt_emb_per_head")),
    (56, 4, 3, "gemma", {}),
]


def _random_params(cfg, seed: int):
  """Random host params for `cfg`, shaped by eval_shape (no init compilation)."""
  rng = np.random.default_rng(seed)
  def draw(name, sd):
    std = 1.0 if name.endswith("input_embedding") else 0.2
    return (rng.normal(size=sd.shape) * std).astype(np.float32)
  flat = checkpoint.flatten(model_lib.param_shapes(cfg))
  return checkpoint.unflatten({k: draw(k, v) for k, v in flat.items()})


def _check_layout(cfg, flat):
  c, depth, attn = cfg.llm, cfg.llm.depth, "llm/layers/attn/"
  if c.num_kv_heads == c.num_heads:
    assert flat[attn + "qkv_einsum/w"].shape == (depth, 3, c.num_heads, c.width, c.head_dim)
    assert attn + "q_einsum/w" not in flat and attn + "kv_einsum/w" not in flat
  else:
    assert flat[attn + "q_einsum/w"].shape == (depth, c.num_heads, c.width, c.head_dim)
    assert flat[attn + "kv_einsum/w"].shape == (depth, 2, c.num_kv_heads, c.width, c.head_dim)
    assert attn + "qkv_einsum/w" not in flat
  assert flat[attn + "attn_vec_einsum/w"].shape == (depth, c.num_heads, c.head_dim, c.width)
  assert flat["llm/layers/mlp/gating_einsum"].shape == (depth, 2, c.width, c.mlp_dim)
  assert ("llm/layers/post_ffw_norm/scale" in flat) == (cfg.family == "gemma2")
  assert ("llm/layers/post_attention_norm/scale" in flat) == (cfg.family == "gemma2")
  assert flat["img/pos_embedding"].shape == (1, cfg.num_patches, cfg.img.width)
  assert flat["img/Transformer/encoderblock/LayerNorm_0/scale"].shape == (
      cfg.img.depth, cfg.img.width)
  assert flat["img/head/kernel"].shape == (cfg.img.width, c.width)


def test_init_params_matches_param_shapes():
  # One real initialisation (its compilation is the slow part); the other
  # configs below check the same tree through eval_shape.
  cfg = _tiny_config(28, 2, 1, "gemma2", seed=0)
  params = model_lib.init_params(cfg, seed=0)
  flat = checkpoint.flatten(params)
  want = checkpoint.flatten(model_lib.param_shapes(cfg))
  assert {k: (v.shape, v.dtype) for k, v in flat.items()} == {
      k: (v.shape, v.dtype) for k, v in want.items()}
  assert all(np.isfinite(np.asarray(v)).all() for v in flat.values())
  _check_layout(cfg, flat)
  # Zero-initialised norms and biases, as in big_vision.
  assert not np.asarray(flat["llm/final_norm/scale"]).any()
  assert not np.asarray(flat["img/head/bias"]).any()
  assert np.asarray(flat["llm/layers/attn/q_einsum/w"]).std() > 0


@pytest.mark.parametrize("image_size,kv,depth,family,extra", TINY_CASES)
def test_random_tiny_configs_build_and_run(image_size, kv, depth, family, extra):
  cfg = _tiny_config(image_size, kv, depth, family, seed=image_size + kv + depth, **extra)
  c = cfg.llm
  params = _random_params(cfg, seed=depth)
  _check_layout(cfg, checkpoint.flatten(params))
  rng = np.random.default_rng(0)
  text, mask_ar, mask_input = _random_text(rng, c.vocab_size, [(4, 3), (6, 0)], 10)
  image = rng.uniform(-1, 1, (2, image_size, image_size, 3)).astype(np.float32)
  zimg, pre, logits = forward_logits(model_lib.build(cfg), params, image, text, mask_ar,
                                     mask_input)
  assert zimg.shape == (2, (image_size // 14) ** 2, c.width)
  assert pre.shape == (2, 10, c.width)
  assert logits.shape == (2, 10, c.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  # The image matters, and so does the text.
  _, _, other = forward_logits(model_lib.build(cfg), params, -image, text[::-1], mask_ar[::-1],
                               mask_input[::-1])
  assert np.abs(np.asarray(other)[::-1] - np.asarray(logits)).max() > 1e-3


def _gqa_pair(kv: int, family: str):
  """A K-kv-head model and its explicit num_heads-kv-head (fused) equivalent."""
  cfg_k = _tiny_config(28, kv, 2, family, seed=7)
  cfg_n = dataclasses.replace(cfg_k, llm=dataclasses.replace(cfg_k.llm, num_kv_heads=4))
  params = _random_params(cfg_k, seed=1)
  attn = params["llm"]["layers"]["attn"]
  return cfg_k, cfg_n, params, attn["q_einsum"]["w"], attn["kv_einsum"]["w"]


def _to_fused(params, q, kv_w, expand):
  out = jax.tree.map(lambda x: x, params)
  attn = out["llm"]["layers"]["attn"]
  del attn["q_einsum"], attn["kv_einsum"]
  k, v = expand(kv_w[:, 0]), expand(kv_w[:, 1])  # (L, N, D, H) each.
  attn["qkv_einsum"] = {"w": np.stack([q, k, v], axis=1)}
  return out


# K = 1 (multi-query) is what both parity fixtures use; K = 2 is true grouping.
@pytest.mark.parametrize("kv,family", [(2, "gemma2")])
def test_grouped_query_attention_equals_repeated_kv_heads(kv, family):
  cfg_k, cfg_n, params, q, kv_w = _gqa_pair(kv, family)
  g = 4 // kv
  fused = _to_fused(params, q, kv_w, lambda w: np.repeat(w, g, axis=1))
  shapes = checkpoint.flatten(model_lib.param_shapes(cfg_n))
  assert {k: v.shape for k, v in checkpoint.flatten(fused).items()} == {
      k: v.shape for k, v in shapes.items()}

  rng = np.random.default_rng(3)
  text, mask_ar, mask_input = _random_text(rng, cfg_k.llm.vocab_size, [(5, 4), (3, 0), (2, 6)],
                                           11)
  zimg = rng.normal(size=(3, cfg_k.num_patches, cfg_k.llm.width)).astype(np.float32)
  run = lambda cfg, p: np.asarray(forward_logits(model_lib.build(cfg), p, None, text, mask_ar,
                                                 mask_input, zimg)[2])
  want = run(cfg_n, fused)
  got = run(cfg_k, params)
  real = mask_input.astype(bool)
  np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
  if g < 4:  # Query head n uses kv head n // g, not n % K: the check can tell.
    wrong = run(cfg_n, _to_fused(params, q, kv_w, lambda w: np.tile(w, (1, g, 1, 1))))
    assert np.abs(wrong[real] - want[real]).max() > 1e-2


@pytest.fixture(scope="module")
def pg2_tiny():
  return load_fixture_model("paligemma2-tiny", "config_softcap30.json")


ROWS = [(5, 3), (7, 0), (3, 5), (12, 0), (2, 1)]


def test_padding_invariance(pg2_tiny):
  cfg, model, params = pg2_tiny
  rng = np.random.default_rng(0)
  zimg = rng.normal(size=(len(ROWS), cfg.num_patches, cfg.llm.width)).astype(np.float32)
  t12, ar12, in12 = _random_text(np.random.default_rng(1), cfg.llm.vocab_size, ROWS, 12)
  t20, ar20, in20 = _random_text(np.random.default_rng(1), cfg.llm.vocab_size, ROWS, 20)
  np.testing.assert_array_equal(t20[:, :12], t12)
  junk = rng.integers(0, cfg.llm.vocab_size, t20.shape).astype(np.int32)
  t20j, _, _ = _random_text(np.random.default_rng(1), cfg.llm.vocab_size, ROWS, 20, junk)
  ar20j = np.where(in20 == 1, ar20, rng.integers(0, 2, ar20.shape)).astype(np.int32)
  assert (t20j != t20).any() and (ar20j != ar20).any()
  run = lambda *a: np.asarray(forward_logits(model, params, None, *a, zimg)[2])
  l12, l20, l20j = run(t12, ar12, in12), run(t20, ar20, in20), run(t20j, ar20j, in20)
  real = in12.astype(bool)
  np.testing.assert_allclose(l20[:, :12][real], l12[real], atol=1e-4, rtol=0)
  # Same shapes: what sits in the padding changes nothing at all.
  np.testing.assert_array_equal(l20j[in20 == 1], l20[in20 == 1])


def test_decode_with_less_padding(pg2_tiny):
  # The fixture's prompts are padded to 32; padded only to the longest prompt
  # (17), greedy decoding must give big_vision's tokens all the same.
  cfg, model, params = pg2_tiny
  ref = load_npz(FIXTURES / "paligemma2-tiny" / "reference_softcap30.npz")
  n = int(ref["prefix_len"].max())
  assert n < 32 and not ref["pred_batch/mask_input"][:, n:].any()
  batch = {"image": ref["batch/image"], "text": ref["pred_batch/text"][:, :n],
           "mask_ar": ref["pred_batch/mask_ar"][:, :n],
           "mask_input": ref["pred_batch/mask_input"][:, :n]}
  out = predict.decode(model, params, batch, 4, EOS_ID, jnp.float32)
  np.testing.assert_array_equal(out.tokens_BxN, ref["decode_tokens_f32cache"])
  np.testing.assert_allclose(out.logp_BxN, ref["decode_logp_f32cache"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.first_logits_BxV, ref["prefill_logits_f32cache"], atol=1e-4,
                             rtol=0)


# Checkpoints -----------------------------------------------------------------

@pytest.fixture(scope="module")
def pg1_tiny():
  cfg, _, params = load_fixture_model("paligemma-tiny")
  return cfg, params, model_lib.param_shapes(cfg)


def _kaggle_arrays():
  with np.load(FIXTURES / "paligemma-tiny" / "params.npz") as f:
    return {k: f[k] for k in f.files}


def _assert_same_tree(a, b, dtype=None):
  fa, fb = checkpoint.flatten(a), checkpoint.flatten(b)
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
  want = {"params/" + k for k in checkpoint.flatten(params)}
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
  flat = checkpoint.flatten(mixed)
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
  flat = checkpoint.flatten(shapes)
  pattern = re.compile(train.TRAINABLE.get(trainable, trainable))
  tr, fr = train.split_params(shapes, trainable)
  ftr, ffr = checkpoint.flatten(tr), checkpoint.flatten(fr)
  assert ftr and all(pattern.search(k) for k in ftr)
  assert not any(pattern.search(k) for k in ffr)
  assert sorted([*ftr, *ffr]) == sorted(flat) and not set(ftr) & set(ffr)
  assert {k for k in flat if pattern.search(k)} == set(ftr)
  merged = train.merge_params(tr, fr)
  assert checkpoint.flatten(merged) == flat
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
    train.split_params(shapes, r"^nothing/")


@pytest.mark.parametrize("preset, tokens", [("paligemma-3b-pt-448", 1024),
                                            ("paligemma2-3b-pt-448", 1024),
                                            ("paligemma2-10b-pt-224", 256),
                                            ("paligemma2-28b-pt-224", 256)])
def test_larger_presets_by_shape(preset, tokens):
  cfg = config_lib.preset(preset)
  flat = checkpoint.flatten(model_lib.param_shapes(cfg))
  assert flat["img/pos_embedding"].shape == (1, tokens, 1152)
  llm = cfg.llm
  assert flat["llm/layers/attn/q_einsum/w"].shape == (llm.depth, llm.num_heads, llm.width,
                                                      llm.head_dim)
  assert flat["llm/layers/attn/kv_einsum/w"].shape[:3] == (llm.depth, 2, llm.num_kv_heads)
  assert ("llm/layers/post_ffw_norm/scale" in flat) == (cfg.family == "gemma2")
  total = sum(math.prod(v.shape) for v in flat.values())
  expected = {"paligemma2-10b-pt-224": 9.66e9, "paligemma2-28b-pt-224": 27.65e9}.get(preset)
  if expected:  # Published sizes of PaliGemma 2 10B and 28B (within 2%).
    assert abs(total - expected) / expected < 0.02, total
