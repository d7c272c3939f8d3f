"""tools/planner.py: the memory plan of a recipe, by shape only (nothing allocated)."""

from __future__ import annotations

import dataclasses

import jax
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


def test_lora_plans_its_adapters():
  from palijudge.model import lora
  p = planner.plan(TINY, train.TrainConfig(batch_size=2, trainable="lora", lora_rank=4), 64,
                   jnp.bfloat16)
  adapters = lora.adapter_shapes(model_lib.param_shapes(TINY)["llm"]["layers"], 4)
  assert p.trainable == p.gradients == 4 * params_lib.count(adapters) > 0
  assert p.frozen == 2 * params_lib.count(model_lib.param_shapes(TINY))


def test_quantized_frozen_matrices_shrink_the_plan():
  """--quantize: the frozen tree as the loader holds it (int8 / packed 4-bit, f32 scales)."""
  tcfg = train.TrainConfig(batch_size=2, trainable="lora")
  none = planner.plan(TINY, tcfg, 64, jnp.bfloat16)
  int8 = planner.plan(TINY, tcfg, 64, jnp.bfloat16, quantize="int8")
  int4 = planner.plan(TINY, tcfg, 64, jnp.bfloat16, quantize="int4")
  assert int4.frozen < int8.frozen < 0.7 * none.frozen  # The embedding (a quarter) stays bf16.
  assert int8.trainable == none.trainable and int8.activations > 0
  lines = planner.report(TINY, "tiny", batch=2, accum=1, trainable="lora", optimizer="sgd",
                         remat="none", seqlen=64, param_dtype="bfloat16", budget_gib=12,
                         fsdp_table=False, quantize="int4")
  assert "frozen params bfloat16, matrices int4" in lines[0]


def test_full_size_quantized_frozen_bytes_by_shape():
  """The 3B QLoRA recipe's frozen tree: matrices quantized, the token embedding kept bf16."""
  from palijudge import quantize
  cfg = config.preset("paligemma-3b-pt-224")
  frozen = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16),
                        model_lib.param_shapes(cfg))  # LoRA trains adapters only.
  table = 2 * cfg.llm.vocab_size * cfg.llm.width
  matrices = params_lib.nbytes(frozen) - table  # Less a little: norms, biases, positions.
  got = {m: params_lib.nbytes(quantize.abstract(frozen, quantize.describe(m, "lora"))) - table
         for m in ("int8", "int4", "nf4")}
  assert 0.50 < got["int8"] / matrices < 0.51  # 1 byte a value, f32 scales per channel.
  assert 0.25 < got["int4"] / matrices < 0.27  # Half a byte, an f32 scale per 128 values.
  assert got["int4"] < got["nf4"] < 0.29 * matrices  # NF4's 64-value blocks: more scales.
