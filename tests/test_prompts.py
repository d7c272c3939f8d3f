"""palijudge.evaluation.prompts: the prompt file and ranking prompts by a real evaluation."""

from __future__ import annotations

import pytest

from palijudge.evaluation import prompts, scoring
from palijudge.errors import UserError
from palijudge.configs import EvalConfig


def test_prompt_file_and_ranking(tmp_path, tiny_examples, tiny_lm):
  f = tmp_path / "p.txt"
  f.write_text("# candidates\n\n  Is this ad ok?  \nIs it lawful?\n")
  assert prompts.read_prompt_file(str(f)) == ["Is this ad ok?", "Is it lawful?"]
  f.write_text("# only a comment\n\n")
  with pytest.raises(UserError, match="no prompts"):
    prompts.read_prompt_file(str(f))
  exs = tiny_examples[0]
  seen = []

  def fake(examples, prompt):
    seen.append({e.prefix for e in examples})
    return scoring.evaluate(tiny_lm, examples, EvalConfig(prompt=prompt, eval_batch=4))
  ranked = prompts.rank(exs, ["is it ok", "is this an ad"], "auc", fake)
  assert seen == [{""}, {""}]
  assert ranked[0].value >= ranked[1].value
  table = prompts.format_table(ranked, "auc").splitlines()
  assert table[0].startswith("rank") and table[1].startswith("   1")
  assert "auc" in prompts.PROMPT_METRICS
  with pytest.raises(UserError, match="--metric must be one of"):
    prompts.rank(exs, ["is it ok"], "speed", fake)
