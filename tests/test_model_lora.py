"""palijudge.model.lora: exact start, per-layer merge = full merge, alpha scales the update.

(The training round trip of an adapter-only checkpoint is in test_lora.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from palijudge import params as params_lib
from palijudge.data.batch import Batches
from palijudge.data.examples import DEFAULT_PROMPT
from palijudge.model import lora
from palijudge.model import paligemma as model_lib


@pytest.fixture(scope="module")
def feed(tiny_lm, tiny_examples):
  """One prompt-only batch of 4 examples of the tiny project."""
  examples, _, _ = tiny_examples
  _, batch = next(iter(Batches(examples[:4], tiny_lm.tok, tiny_lm.cfg.image_size, 4,
                               DEFAULT_PROMPT, with_suffix=False)))
  return batch


def _score(lm, params, feed, model=None):
  return np.asarray(model_lib.yes_no_logits(model or lm.model, params, feed.inputs(),
                                            feed.prefix_len,
                                            np.asarray(lm.yes_no_ids, np.int32)))


def _random_adapters(params, seed):
  """Adapters with non-zero B, so that they change the model."""
  flat = params_lib.flatten(lora.add_adapters(params, 4, seed))
  rng = np.random.default_rng(seed)
  for k in flat:
    if k.startswith(lora.PREFIX) and k.endswith("/b"):
      flat[k] = rng.normal(0, 0.05, flat[k].shape).astype(np.float32)
  return params_lib.unflatten(flat)


def test_fresh_adapters_leave_the_model_unchanged(tiny_lm, feed):
  lm = tiny_lm
  with_adapters = lora.add_adapters(lm.params, 8, 0)
  np.testing.assert_allclose(_score(lm, with_adapters, feed), _score(lm, lm.params, feed),
                             atol=1e-5)


def test_per_layer_merge_equals_merging_everything(tiny_lm, feed):
  lm = tiny_lm
  params = _random_adapters(lm.params, 3)
  on_the_fly = _score(lm, params, feed)
  merged = lora.merge(params)
  assert "lora" not in merged["llm"]["layers"]
  np.testing.assert_allclose(on_the_fly, _score(lm, merged, feed), atol=1e-4)
  assert np.abs(on_the_fly - _score(lm, lm.params, feed)).max() > 1e-3  # They do act.
  q = params_lib.flatten(params)["llm/layers/lora/attn/q_einsum/w/a"]
  assert q.shape == (lm.cfg.llm.depth, lm.cfg.llm.width, 4)


def test_alpha_scales_the_update(tiny_lm, feed):
  lm = tiny_lm
  params = _random_adapters(lm.params, 5)
  base = params_lib.flatten(lm.params)
  m16 = params_lib.flatten(lora.merge(params, 16.0))
  m32 = params_lib.flatten(lora.merge(params, 32.0))
  assert lora.DEFAULT_ALPHA == 16.0
  np.testing.assert_array_equal(np.asarray(params_lib.flatten(lora.merge(params))[
      "llm/layers/mlp/linear"]), np.asarray(m16["llm/layers/mlp/linear"]))
  adapted = sorted({k[len(lora.PREFIX):-2] for k in params_lib.flatten(params)
                    if k.startswith(lora.PREFIX)})
  assert "attn/q_einsum/w" in adapted and "mlp/linear" in adapted
  for name in adapted:
    w = np.asarray(base["llm/layers/" + name], np.float32)
    d16 = np.asarray(m16["llm/layers/" + name], np.float32) - w
    d32 = np.asarray(m32["llm/layers/" + name], np.float32) - w
    assert np.abs(d16).max() > 0, name
    np.testing.assert_allclose(d32, 2 * d16, rtol=1e-4, atol=1e-6, err_msg=name)
  # The model's own (per-layer) merge uses its alpha the same way.
  model32 = model_lib.build(lm.cfg, lm.model.dtype, lora_alpha=32.0)
  np.testing.assert_allclose(_score(lm, params, feed, model32),
                             _score(lm, params_lib.unflatten(m32), feed), atol=1e-4)
  assert np.abs(_score(lm, params, feed, model32) - _score(lm, params, feed)).max() > 1e-3
