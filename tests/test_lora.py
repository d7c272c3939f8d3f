"""LoRA adapters: exact start, per-layer merge = full merge, adapter-only save and load."""

from __future__ import annotations

import numpy as np
import pytest

from palijudge import checkpoint, train
from palijudge.model import lora as lora
from palijudge.model import paligemma as predict
from palijudge import learn as runner
from palijudge import loader as session
from palijudge.data import synthetic as synthetic
from palijudge.data import examples as data_lib
from palijudge.data.batch import Batches
from palijudge import params as params_lib


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("lora")
  spec = session.write_random_model("tiny", str(root / "cache"), seed=1)
  examples = data_lib.read_jsonl(synthetic.make_dataset(root / "data", n=8, seed=2))
  lm = session.load(spec, trainable="lora")
  _, batch = next(iter(Batches(examples[:4], lm.tok, lm.cfg.image_size, 4,
                               session.DEFAULT_PROMPT, with_suffix=False)))
  feed = {k: batch[k] for k in ("image", "text", "mask_ar", "mask_input", "prefix_len")}
  return root, lm, examples, feed


def _score(lm, params, feed):
  return np.asarray(predict.yes_no_logits(lm.model, params, feed,
                                          np.asarray(lm.yes_no_ids, np.int32)))


def _random_adapters(params, seed):
  """Adapters with non-zero B, so that they change the model."""
  flat = params_lib.flatten(lora.add_adapters(params, 4, seed))
  rng = np.random.default_rng(seed)
  for k in flat:
    if k.startswith(lora.PREFIX) and k.endswith("/b"):
      flat[k] = rng.normal(0, 0.05, flat[k].shape).astype(np.float32)
  return params_lib.unflatten(flat)


def test_fresh_adapters_leave_the_model_unchanged(setup):
  _, lm, _, feed = setup
  with_adapters = lora.add_adapters(lm.params, 8, 0)
  np.testing.assert_allclose(_score(lm, with_adapters, feed), _score(lm, lm.params, feed),
                             atol=1e-5)


def test_per_layer_merge_equals_merging_everything(setup):
  _, lm, _, feed = setup
  params = _random_adapters(lm.params, 3)
  on_the_fly = _score(lm, params, feed)
  merged = lora.merge(params)
  assert "lora" not in merged["llm"]["layers"]
  np.testing.assert_allclose(on_the_fly, _score(lm, merged, feed), atol=1e-4)
  assert np.abs(on_the_fly - _score(lm, lm.params, feed)).max() > 1e-3  # They do act.
  q = params_lib.flatten(params)["llm/layers/lora/attn/q_einsum/w/a"]
  assert q.shape == (lm.cfg.llm.depth, lm.cfg.llm.width, 4)


def test_lora_trains_and_round_trips_as_an_adapter_only_delta(setup, tmp_path, monkeypatch):
  root, lm, examples, feed = setup
  monkeypatch.chdir(tmp_path)
  tcfg = train.TrainConfig(trainable="lora", optimizer="adam", lr=0.01, steps=4, batch_size=2,
                           lora_rank=4)
  setup_ = runner.LearnSetup(names=("a", "t", "v"), save_to="lora.npz")
  res = runner.learn(lm, examples[:6], examples[6:], tcfg,
                     runner.EvalOptions(prompt=session.DEFAULT_PROMPT), setup_,
                     log=lambda _: None)
  names = checkpoint.param_names("lora.npz")
  assert names and all(n.startswith(lora.PREFIX) for n in names)
  loaded = session.load(session.resolve("lora.npz"), trainable="lora")
  np.testing.assert_allclose(_score(loaded, loaded.params, feed),
                             _score(res.lm, res.lm.params, feed), atol=1e-5)
  b = params_lib.flatten(loaded.params)["llm/layers/lora/mlp/linear/b"]
  assert np.abs(np.asarray(b)).max() > 0  # The adapters were trained.
  base_flat = params_lib.flatten(lm.params)
  for name, leaf in params_lib.flatten(loaded.params).items():
    if not name.startswith(lora.PREFIX):  # The base itself is untouched.
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(base_flat[name]))
