"""tools/planner.py: the memory plan of a recipe, by shape only (nothing allocated)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import pytest

from palijudge import params as params_lib
from palijudge import train
from palijudge.model import config
from palijudge.model import paligemma as model_lib
from palijudge.tools import planner

TINY = config.preset("tiny")


def test_state_bytes_follow_the_parameter_tree():
  tcfg = train.TrainConfig(batch_size=2)
  p = planner.plan(TINY, tcfg, 64, jnp.bfloat16)
  trainable, frozen = params_lib.split(model_lib.param_shapes(TINY), "attn")
  assert p.trainable == 4 * params_lib.count(trainable)  # f32
  assert p.frozen == 2 * params_lib.count(frozen)        # bf16
  assert p.gradients == p.trainable and p.optimizer == 0  # SGD keeps no moments.
  adam = planner.plan(TINY, dataclasses.replace(tcfg, optimizer="adam"), 64, jnp.bfloat16)
  assert adam.optimizer == 2 * adam.trainable


def test_more_batch_needs_more_memory_and_the_report_finds_the_largest_that_fits():
  small = planner.plan(TINY, train.TrainConfig(batch_size=1), 64, jnp.bfloat16)
  big = planner.plan(TINY, train.TrainConfig(batch_size=8), 64, jnp.bfloat16)
  assert big.activations > small.activations and big.state == small.state
  budget_gib = (small.total + 3 * (big.total - small.total) / 7) / planner.GIB  # About batch 4.
  lines = planner.report(TINY, "tiny", batch=2, accum=1, trainable="attn", optimizer="sgd",
                         remat="none", seqlen=64, param_dtype="bfloat16", budget_gib=budget_gib,
                         fsdp_table=True)
  assert lines[0].startswith("tiny: batch 2 x accum 1, trainable attn, sgd")
  assert sum("FSDP on" in l for l in lines) == 3
  best = int(next(l for l in lines if "largest batch that fits" in l).rsplit(": ", 1)[1])
  assert 1 <= best < 8
  fits = planner.plan(TINY, train.TrainConfig(batch_size=best), 64, jnp.bfloat16)
  over = planner.plan(TINY, train.TrainConfig(batch_size=best + 1), 64, jnp.bfloat16)
  assert fits.total <= int(budget_gib * planner.GIB) < over.total


def test_fsdp_splits_the_state_over_devices():
  p = planner.plan(TINY, train.TrainConfig(batch_size=2), 64, jnp.bfloat16)
  assert p.per_device(4) < p.per_device(1)
  assert 0 < p.gathered < p.state  # One decoder layer's weights, gathered whole under FSDP.
  assert p.per_device(4) == -(-p.state // 4) + p.activations + p.gathered
  n = planner.devices_needed(p, p.activations + p.gathered + p.state // 3 + 1)
  assert n == 3
  assert planner.devices_needed(p, p.total) == 1  # Fits one device: no FSDP needed.
  assert planner.devices_needed(p, p.activations + p.gathered) is None  # Nothing left.


@pytest.mark.parametrize("name", ["paligemma-3b-pt-224"])
def test_full_size_state_by_shape(name):
  """The 3B attention-only recipe's state, by shape: bf16 frozen + f32 attention."""
  cfg = config.preset(name)
  trainable, frozen = params_lib.split(model_lib.param_shapes(cfg), "attn")
  n_train, n_frozen = params_lib.count(trainable), params_lib.count(frozen)
  assert n_train + n_frozen == 2_923_335_408
  # state = frozen bf16 + trainable f32 + its f32 gradient (SGD: no moments).
  state = 2 * n_frozen + 8 * n_train
  assert 6.0 < state / planner.GIB < 7.0
