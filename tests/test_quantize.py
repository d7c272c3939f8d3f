"""quantize.py: --quantize int8|int4|nf4 over the frozen matrices (qwix QArray).

Per mode: the dequantized weights stay within the scheme's step, the tiny
model's scores move by a bounded amount, training over the quantized weights
learns (attention-only and LoRA), and a saved delta re-validates bit for bit.
Hostile inputs: a bad mode, a checkpoint saved with another mode or a scheme
this version does not reproduce, a recipe with nothing frozen, --full.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from hypothesis import given, settings, strategies as st

from palijudge import configs
from palijudge import checkpoint, learn, loader, quantize, train
from palijudge.evaluation import scoring
from palijudge import params as params_lib
from palijudge.data.examples import DEFAULT_PROMPT
from palijudge.errors import UserError
from palijudge.model import config as config_lib
from palijudge.model import lora
from palijudge.model import paligemma as model_lib
from testing import in_process
from palijudge.configs import EvalConfig

ECFG = EvalConfig(prompt=DEFAULT_PROMPT)  # train.fit's prompt and GIF frame.

MODES = ("int8", "int4", "nf4")
# Largest dequantization error per element, in units of the element's scale: half a step
# for the integers, half the widest gap between NF4's levels (-1 and -0.696) for NF4.
STEP_BOUND = {"int8": 0.5, "int4": 0.5, "nf4": 0.1520}


def _quiet(*_):
  return None


def _spec(project):
  return loader.resolve("tiny", cache_dir=str(project.cache))


def _scale_per_element(q: qwix.QArray) -> np.ndarray:
  """Each element's scale: what a value of one step (NF4: level 15, +1.0) dequantizes to."""
  one = 15 if q.qtype == "nf4" else 1
  return np.asarray(qwix.dequantize(dataclasses.replace(
      q, qvalue=np.full(q.qvalue.shape, one, q.qvalue.dtype))))


@settings(max_examples=12, deadline=None)
@given(mode=st.sampled_from(MODES), layers=st.integers(1, 3), d=st.sampled_from([64, 192, 256]),
       f=st.integers(1, 24), spread=st.floats(1e-3, 1e2), seed=st.integers(0, 2 ** 16))
def test_dequantized_weights_stay_within_the_step(mode, layers, d, f, spread, seed):
  a = (np.random.default_rng(seed).standard_normal((layers, d, f)) * spread).astype(np.float16)
  q = quantize.quantize_array(a, (1,), quantize.scheme(mode))
  assert q.qvalue.shape == a.shape and q.scale.dtype == np.float32
  assert q.scale.shape[0] == layers  # Depth is a channel axis: scan and slicing keep scales.
  err = np.abs(np.asarray(qwix.dequantize(q)) - a.astype(np.float32))
  assert (err <= STEP_BOUND[mode] * _scale_per_element(q) * (1 + 1e-4) + 1e-30).all()


def test_sub_channel_tiles_follow_the_contracted_axis():
  a = np.ones((2, 4304, 8), np.float32)  # The 3B vision MLP's 4304 inputs: no 128 tile.
  assert quantize.quantize_array(a, (1,), quantize.scheme("int8")).scale.shape == (2, 1, 8)
  assert quantize.quantize_array(a, (1,), quantize.scheme("int4")).scale.shape == (2, 16, 8)
  b = np.ones((2, 2048, 8), np.float32)
  assert quantize.quantize_array(b, (1,), quantize.scheme("int4")).scale.shape == (2, 16, 8)
  assert quantize.quantize_array(b, (1,), quantize.scheme("nf4")).scale.shape == (2, 32, 8)


def test_quantizing_in_slices_gives_the_same_integers(monkeypatch):
  a = np.random.default_rng(0).standard_normal((7, 256, 16)).astype(np.float16)
  for mode in MODES:
    whole = quantize.quantize_array(a, (1,), quantize.scheme(mode))
    monkeypatch.setattr(quantize, "_CHUNK", 2 * 256 * 16)  # Slices of 2 layers (and 1).
    sliced = quantize.quantize_array(a, (1,), quantize.scheme(mode))
    monkeypatch.undo()
    for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(sliced)):
      assert x.dtype == y.dtype
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_every_matrix_of_every_preset_is_known():
  """The table of contracted axes covers each preset's matrices, and nothing else."""
  for name in ("tiny", "paligemma-3b-pt-224", "paligemma2-10b-pt-224"):
    flat = params_lib.flatten(model_lib.param_shapes(config_lib.preset(name)))
    picked = quantize.frozen_matrices(flat, "lora")
    assert all(flat[n].ndim >= 2 for n in picked)
    skipped = {n for n in flat if n not in picked}
    assert "llm/embedder/input_embedding" in skipped  # The vocabulary's output layer too.
    assert all(n.endswith(("bias", "scale", "pos_embedding", "input_embedding"))
               for n in skipped), skipped
    assert not any(n.startswith("llm/layers/attn/") for n in quantize.frozen_matrices(flat, "attn"))


@pytest.mark.parametrize("mode", MODES)
def test_forward_error_is_bounded_on_the_tiny_model(tiny_project, tiny_lm, tiny_examples, mode):
  every, _, _ = tiny_examples
  ecfg = configs.EvalConfig().resolved()
  lm = loader.load(_spec(tiny_project), trainable="attn", quantize=mode)
  flat = params_lib.flatten(lm.params)
  assert quantize.is_quantized(flat["llm/layers/mlp/linear"])
  assert quantize.is_quantized(flat["img/head/kernel"])
  assert not quantize.is_quantized(flat["llm/layers/attn/q_einsum/w"])  # Trainable: f32.
  names = [n for n, v in flat.items() if quantize.is_quantized(v)]
  assert sorted(names) == sorted(quantize.frozen_matrices(flat, "attn"))
  plain = params_lib.flatten(tiny_lm.params)  # f32: a quarter, or an eighth, and the scales.
  assert params_lib.nbytes([flat[n] for n in names]) < 0.3 * params_lib.nbytes(
      [plain[n] for n in names])
  ref = scoring.evaluate(tiny_lm, every, ecfg).p_yes
  got = scoring.evaluate(lm, every, ecfg).p_yes
  diff = np.abs(got - ref)
  # Measured on this random model: 0.00017, 0.0020, 0.0015; the bounds leave room for other
  # BLAS builds; 0 would mean nothing was quantized.
  assert 0 < diff.max() < {"int8": 0.001, "int4": 0.01, "nf4": 0.01}[mode], diff.max()


def test_decode_mode_reads_quantized_weights_and_adapters(tiny_project, tiny_examples):
  _, _, va = tiny_examples
  lm = loader.load(_spec(tiny_project), trainable="lora", quantize="int4")
  lm = dataclasses.replace(lm, params=lora.add_adapters(lm.params, 4, seed=1))
  flat = params_lib.flatten(lm.params)
  flat["llm/layers/lora/mlp/linear/b"] = np.full_like(flat["llm/layers/lora/mlp/linear/b"], 0.05)
  lm = dataclasses.replace(lm, params=params_lib.unflatten(flat))
  scored = scoring.evaluate(lm, va, configs.EvalConfig().resolved()).p_yes
  decoded = scoring.evaluate(lm, va, configs.EvalConfig(mode="decode").resolved()).p_yes
  np.testing.assert_allclose(decoded, scored, atol=1e-5)


@pytest.mark.parametrize("mode,recipe", [("int8", "attn"), ("int4", "lora"), ("nf4", "lora"),
                                         ("int4", "attn")])
def test_training_learns_and_a_saved_delta_revalidates_bit_for_bit(
    tiny_project, tiny_examples, tmp_path, mode, recipe):
  _, tr, va = tiny_examples
  lm = loader.load(_spec(tiny_project), trainable=recipe, quantize=mode)
  tcfg = train.TrainConfig(trainable=recipe, optimizer="adam", lr=0.01, steps=16, batch_size=4,
                           lora_rank=4, print_every=100)
  res = train.fit(lm, tr, tcfg, ECFG, log=_quiet)
  losses = [h[2] for h in res.history]
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses
  trained = dataclasses.replace(lm, params=res.params,
                                model=lm.model.clone(lora_alpha=tcfg.lora_alpha))
  ecfg = configs.EvalConfig().resolved()
  after = scoring.evaluate(trained, va, ecfg).p_yes
  path = tmp_path / "q.npz"
  learn.save(trained, tcfg, ecfg, learn.LearnConfig(), str(path), 0.5)
  meta = checkpoint.read_meta(path)
  assert meta["quantize"]["mode"] == mode and meta["quantize"]["trainable"] == recipe
  prefix = lora.PREFIX if recipe == "lora" else "llm/layers/attn/"
  assert all(n.startswith(prefix) for n in checkpoint.param_names(path))  # Only what trained.
  for _ in range(2):  # Run to run, and whatever --trainable the judging script names.
    again = loader.load(loader.resolve(str(path), cache_dir=str(tiny_project.cache)))
    assert again.quantize["mode"] == mode
    np.testing.assert_array_equal(scoring.evaluate(again, va, ecfg).p_yes, after)


@pytest.fixture(scope="module")
def deltas(tiny_project, tiny_examples, tmp_path_factory):
  """{mode: an attention delta trained 2 steps over the tiny model quantized so} (none too)."""
  _, tr, va = tiny_examples
  out = {}
  for mode in ("none", "int8"):
    lm = loader.load(_spec(tiny_project), quantize=mode)
    path = tmp_path_factory.mktemp("deltas") / f"{mode}.npz"
    learn.learn(lm, tr, va, train.TrainConfig(steps=2, batch_size=2),
                configs.EvalConfig().resolved(), names=("all", "train", "valid"),
                save_to=str(path), log=_quiet)
    out[mode] = str(path)
  return out


def test_another_mode_than_the_checkpoints_is_refused(deltas):
  assert loader.load(loader.resolve(deltas["int8"])).quantize["mode"] == "int8"
  with pytest.raises(UserError, match=r"int8\.npz: trained over int8 .*--quantize int4"):
    loader.load(loader.resolve(deltas["int8"]), quantize="int4")
  with pytest.raises(UserError, match=r"trained over unquantized weights; --quantize int8"):
    loader.load(loader.resolve(deltas["none"]), quantize="int8")
  assert loader.load(loader.resolve(deltas["none"]), quantize="none").quantize is None


def test_a_recorded_scheme_this_version_does_not_reproduce_is_refused(deltas, tmp_path):
  with np.load(deltas["int8"]) as npz:
    arrays = {k: npz[k] for k in npz.files if k != checkpoint.META_KEY}
  meta = checkpoint.read_meta(deltas["int8"])
  for bad in ({**meta["quantize"], "tile": 32}, {**meta["quantize"], "mode": "int3"}, "int8",
              {**meta["quantize"], "trainable": "(attn"}, {**meta["quantize"], "trainable": 3}):
    path = tmp_path / "tampered.npz"
    checkpoint.write_npz(path, arrays.items(), {**meta, "quantize": bad})
    with pytest.raises(UserError, match="does not reproduce"):
      loader.load(loader.resolve(str(path)))


def test_nothing_frozen_and_full_saves_are_refused(tiny_project, tiny_examples, tmp_path):
  with pytest.raises(UserError, match="--trainable all trains every matrix"):
    loader.load(_spec(tiny_project), trainable="all", quantize="int4")
  with pytest.raises(UserError, match="--quantize must be one of"):
    quantize.scheme("int3")
  lm = loader.load(_spec(tiny_project), quantize="int8")
  _, tr, va = tiny_examples
  logs = []
  with pytest.raises(UserError, match="--full: this model's frozen weights are quantized"):
    learn.learn(lm, tr, va, train.TrainConfig(steps=2), configs.EvalConfig().resolved(),
                learn.LearnConfig(full=True), names=("all", "train", "valid"),
                save_to=str(tmp_path / "full.npz"), log=logs.append)
  assert not logs and not (tmp_path / "full.npz").exists()
  with pytest.raises(UserError, match="trains llm/layers/attn"):
    lm_lora = loader.load(_spec(tiny_project), trainable="lora", quantize="int8")
    train.fit(lm_lora, tr, train.TrainConfig(trainable="attn", steps=1),
              ECFG, log=_quiet)


def test_the_quantization_is_part_of_the_weights_identity(tiny_project, tiny_lm):
  q8 = loader.load(_spec(tiny_project), quantize="int8")
  q4 = loader.load(_spec(tiny_project), quantize="int4")
  ids = {tiny_lm.weights_id, q8.weights_id, q4.weights_id}
  assert len(ids) == 3 and tiny_lm.weights_id == tiny_lm.spec.weights_id
  keys = {loader.encoder_cache(lm, "first").model_key for lm in (tiny_lm, q8, q4)}
  assert len(keys) == 3  # Image tokens of one encoder are never served for another.


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # qwix's own use of nnx.VariableState.
def test_qwix_model_level_api_misses_this_models_weights():
  """Why palijudge applies qwix's QArray itself (quantize.py's docstring): re-check it here."""
  cfg = config_lib.preset("tiny")
  rule = qwix.QuantizationRule(module_path="^(?!img/embedding).*", weight_qtype=jnp.int8)
  ptq = qwix.quantize_model(model_lib.build(cfg), qwix.PtqProvider([rule]))
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  text = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  flat = params_lib.flatten(jax.eval_shape(ptq.init, jax.random.PRNGKey(0), image, text,
                                           text)["params"])
  plain = params_lib.flatten(model_lib.param_shapes(cfg))
  wrapped = lambda n: type(flat[n]).__name__ == "WithAux"  # noqa: E731
  assert not wrapped("llm/layers/attn/q_einsum/w")  # A child module's weight: never found.
  assert wrapped("llm/layers/mlp/gating_einsum")  # Found through the slice w[0] ...
  assert flat["llm/layers/mlp/gating_einsum"].shape != plain["llm/layers/mlp/gating_einsum"].shape


@pytest.fixture
def script(tiny_project, monkeypatch, capsys):
  run = in_process(tiny_project.root, monkeypatch, capsys)

  def without_bars(name, *args):  # Progress bars' lines are not errors.
    code, out, err = run(name, *args)
    return code, out, [l for l in err.strip().splitlines() if "%|" not in l]
  return without_bars


def test_scripts_refuse_a_bad_mode_and_another_mode_in_one_line(script, deltas):
  code, _, err = script("04-validate.py", "--model", "tiny", "dataset/set1/valid.jsonl",
                        "--quantize", "int3")
  assert code == 2 and len(err) == 1 and "--quantize" in err[0] and "int3" in err[0], err
  code, _, err = script("04-validate.py", "-m", deltas["int8"], "dataset/set1/valid.jsonl",
                        "--quantize", "nf4")
  assert code == 2 and len(err) == 1 and "trained over int8" in err[0], err
  code, out, err = script("04-validate.py", "-m", deltas["int8"], "dataset/set1/valid.jsonl")
  assert code == 0 and "Result: dataset/set1/valid.jsonl" in out, err
