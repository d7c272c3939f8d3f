"""tools/demo.py: `make demo` learns the generated data, and its gate says so."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from palijudge.data.examples import Example
from palijudge.evaluation.scoring import EvalResult
from palijudge.files import Project
from palijudge.tools import demo


def _result(correct: int, n: int = 10) -> EvalResult:
  labels = np.array([i % 2 == 0 for i in range(n)])
  pred = labels.copy()
  pred[correct:] = ~pred[correct:]
  exs = [Example(f"/x/{i}.png", bool(y), "", "yes" if y else "no", "d.jsonl", i + 1, f"{i}.png")
         for i, y in enumerate(labels)]
  return EvalResult(exs, pred.astype(np.float32), pred, [""] * n, 0, 0.5)


@pytest.mark.parametrize("correct, ok", [(10, True), (9, True), (8, False)])
def test_gate(correct, ok):
  passed, line = demo.gate(_result(correct))
  assert passed == ok
  assert line == (f"demo: valid accuracy {correct / 10:.3f} "
                  f"({'ok' if ok else 'below 0.9'})")


@pytest.mark.script
def test_the_demo_recipe_learns_the_generated_rule(tmp_path):
  """A shortened demo (fewer images and steps) still learns the stamp cue."""
  recipe = dataclasses.replace(demo.DEMO_RECIPE, steps=100, print_every=1000)
  logs = []
  valid = demo.run(Project.at(tmp_path), recipe=recipe, seed=0, save=True, n_images=100,
                   log=logs.append)
  assert (tmp_path / "checkpoints" / "demo.npz").is_file()
  assert valid.confusion.accuracy >= 0.9, "\n".join(logs)


@pytest.mark.script
def test_the_demo_learns_over_a_quantized_encoder(tmp_path):
  """--quantize int4: the encoder and projection frozen in 4 bits, the decoder learns the cue."""
  from palijudge import checkpoint
  recipe = dataclasses.replace(demo.DEMO_RECIPE, steps=200, print_every=1000)
  logs = []
  valid = demo.run(Project.at(tmp_path), recipe=recipe, seed=0, save=True, n_images=100,
                   quantize="int4", log=logs.append)
  meta = checkpoint.read_meta(tmp_path / "checkpoints" / "demo.npz")
  assert meta["quantize"]["mode"] == "int4" and meta["train_config"]["trainable"] == "llm"
  assert valid.confusion.accuracy >= 0.9, "\n".join(logs)
