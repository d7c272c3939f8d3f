"""palijudge.model.paligemma: full-size shapes (eval_shape only), random tiny configs,
grouped-query attention, padding invariance, decoding, and the larger presets by shape."""

from __future__ import annotations

import ast
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from palijudge import params as params_lib
from palijudge.model import config as config_lib
from palijudge.model import paligemma as model_lib

from testing import EOS_ID, FIXTURES, forward_logits, load_fixture_model, load_npz


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
  flat = params_lib.flatten(shapes)
  assert all(isinstance(v, jax.ShapeDtypeStruct) for v in flat.values())  # Nothing allocated.
  got = {k: tuple(v.shape) for k, v in flat.items()}
  assert sorted(got) == sorted(want)  # Name for name ...
  assert got == want  # ... and shape for shape.
  count = lambda pred: sum(math.prod(s) for k, s in got.items() if pred(k))
  assert len(got) == num_arrays == totals["num_arrays"]
  assert count(lambda k: True) == total == totals["total_params"]
  assert count(lambda k: k.startswith("img/")) == totals["img_params"]
  assert count(lambda k: k.startswith("llm/")) == totals["llm_params"]
  trainable, _ = params_lib.split(shapes, "attn")
  assert sum(math.prod(v.shape) for v in params_lib.flatten(trainable).values()) == totals[
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
  flat = params_lib.flatten(model_lib.param_shapes(cfg))
  return params_lib.unflatten({k: draw(k, v) for k, v in flat.items()})


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
  flat = params_lib.flatten(params)
  want = params_lib.flatten(model_lib.param_shapes(cfg))
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
  _check_layout(cfg, params_lib.flatten(params))
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
  shapes = params_lib.flatten(model_lib.param_shapes(cfg_n))
  assert {k: v.shape for k, v in params_lib.flatten(fused).items()} == {
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
  _, model, params = pg2_tiny
  ref = load_npz(FIXTURES / "paligemma2-tiny" / "reference_softcap30.npz")
  n = int(ref["prefix_len"].max())
  assert n < 32 and not ref["pred_batch/mask_input"][:, n:].any()
  x = model_lib.Inputs(ref["pred_batch/text"][:, :n], ref["pred_batch/mask_ar"][:, :n],
                       ref["pred_batch/mask_input"][:, :n], ref["batch/image"])
  out = model_lib.decode(model, params, x, 4, EOS_ID, jnp.float32)
  np.testing.assert_array_equal(out.tokens_BxN, ref["decode_tokens_f32cache"])
  np.testing.assert_allclose(out.logp_BxN, ref["decode_logp_f32cache"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.first_logits_BxV, ref["prefill_logits_f32cache"], atol=1e-4,
                             rtol=0)


@pytest.mark.parametrize("preset, tokens", [("paligemma-3b-pt-448", 1024),
                                            ("paligemma2-3b-pt-448", 1024),
                                            ("paligemma2-10b-pt-224", 256),
                                            ("paligemma2-28b-pt-224", 256)])
def test_larger_presets_by_shape(preset, tokens):
  cfg = config_lib.preset(preset)
  flat = params_lib.flatten(model_lib.param_shapes(cfg))
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
