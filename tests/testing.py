"""Shared helpers for the model-side tests (fixture loading, one jitted forward)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np

from palijudge import checkpoint
from palijudge.model import config as config_lib
from palijudge.model import paligemma as model_lib

FIXTURES = Path(__file__).parent / "fixtures"
YES_ID, NO_ID, EOS_ID = 14, 13, 1


def f32(_name: str):
  return np.float32


def load_fixture_model(folder: str, config_name: str = "config.json", dtype_for=f32):
  """(cfg, model, params) of a tiny fixture; params are host (numpy) arrays."""
  cfg = config_lib.from_json_file(FIXTURES / folder / config_name)
  params = checkpoint.load_params(FIXTURES / folder / "params.npz",
                                  model_lib.param_shapes(cfg), dtype_for)
  return cfg, model_lib.build(cfg), params


def load_npz(path) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


@functools.partial(jax.jit, static_argnums=0)
def forward_logits(model, params, image, text, mask_ar, mask_input, zimg=None):
  """(zimg, pre_logits, f32 logits) of the training-layout pass, jitted per model."""
  out = model_lib.forward(model, params, image, text, mask_ar, mask_input, zimg)
  return out.zimg_BxPxD, out.pre_logits_BxTxD, model_lib.text_logits(
      model, params, out.pre_logits_BxTxD)
