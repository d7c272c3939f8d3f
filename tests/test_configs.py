"""palijudge.configs: every concern's config, jax-free; the threshold decided in one place."""

from __future__ import annotations

import subprocess
import sys

import pytest

from palijudge import configs
from palijudge.configs import EvalConfig
from palijudge.errors import UserError
from palijudge.model import vit


def _decide(ecfg: EvalConfig, stored=()) -> tuple[float | None, list[str]]:
  logs: list[str] = []
  return ecfg.decided(stored, logs.append).threshold, logs


# --- The threshold: one function, each source --------------------------------------

def test_threshold_from_the_flag_wins_over_every_stored_one():
  assert _decide(EvalConfig(threshold=0.3), [0.8]) == (0.3, [])
  assert _decide(EvalConfig(threshold=0.3), [0.8, 0.6]) == (0.3, [])  # No warning either.


def test_threshold_stored_with_the_checkpoint_applies_when_no_flag_chooses():
  assert _decide(EvalConfig(), [0.8]) == (0.8, [])
  assert _decide(EvalConfig(), [0.8, 0.8]) == (0.8, [])  # An ensemble that agrees.
  assert _decide(EvalConfig(), []) == (0.5, [])  # The base model: nothing stored.
  assert _decide(EvalConfig(), [None]) == (0.5, [])


def test_threshold_picked_on_a_set_is_left_to_the_report():
  ecfg = EvalConfig(pick_threshold="valid", target="recall=0.9")
  assert _decide(ecfg, [0.8]) == (None, [])  # Picked per report; the stored one does not count.
  assert ecfg.decided([0.8]).decision == 0.5


def test_threshold_of_an_ensemble_that_disagrees_is_half_with_a_warning():
  assert _decide(EvalConfig(), [0.3, 0.3, 0.6]) == (0.5, [
      "warning: the checkpoints store different thresholds (0.3, 0.3, 0.6); judging at 0.5 "
      "(give --threshold or --pick-threshold to choose)"])
  assert _decide(EvalConfig(), [0.3, None])[0] == 0.5  # One stores none: they disagree.


def test_no_threshold_applies_in_decode_mode():
  assert _decide(EvalConfig(mode="decode"), [0.8]) == (None, [])
  assert EvalConfig(mode="decode").decided([0.8]).decision == 0.5


# What the checkpoints store is read by palijudge.resolve (tests/test_resolve.py).


# --- The configs themselves -------------------------------------------------------

def test_configs_import_no_jax():
  code = "import sys, palijudge.configs, palijudge.cli; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


def test_the_names_configs_list_are_the_ones_the_code_knows():
  assert tuple(vit.REMAT_POLICIES) == configs.REMAT_POLICIES
  from palijudge import quantize
  assert set(quantize.MODES) == set(configs.QUANTIZE_MODES)


@pytest.mark.parametrize("kw, match", [
    ({"steps": 0}, "--steps"), ({"lr": float("nan")}, "--lr"), ({"trainable": "x"}, "trainable"),
])
def test_a_bad_recipe_is_refused_by_its_config(kw, match):
  with pytest.raises(UserError, match=match):
    configs.TrainConfig(**kw)
