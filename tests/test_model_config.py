"""palijudge.model.config: JSON schema, refusals, family defaults and the presets."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from palijudge.errors import UserError
from palijudge.model import config as config_lib

from testing import FIXTURES

TINY = dict(image_size=56, img=dict(patch_size=14, width=32, depth=2, mlp_dim=128, num_heads=2),
            llm=dict(vocab_size=512, width=64, depth=2, mlp_dim=128, num_heads=2,
                     num_kv_heads=1, head_dim=32))


def _with(**changes):
  raw = json.loads(json.dumps(TINY))
  for path, value in changes.items():
    *head, last = path.split("__")
    d = raw
    for h in head:
      d = d[h]
    d[last] = value
  return raw


@pytest.mark.parametrize("raw,fragment", [
    (_with(colour="red"), "colour"),
    (_with(img__pool_type="map"), "pool_type"),
    (_with(llm__variant="gemma_2b"), "variant"),
    (_with(img__num_heads=3), "num_heads"),
    (_with(llm__num_heads=4, llm__num_kv_heads=3), "num_kv_heads"),
    (_with(image_size=50), "patch_size"),
    (_with(family="gemma3"), "family"),
    (_with(llm__depth=0), "llm.depth"),
    (_with(img__width=True), "img.width"),
    (_with(llm__query_pre_attn_norm="none"), "query_pre_attn_norm"),
    (_with(llm__final_logits_softcap=-1.0), "soft-cap"),
    ([1, 2], "JSON object"),
])
def test_from_dict_rejects(raw, fragment):
  with pytest.raises(UserError, match=re.escape(fragment)):
    config_lib.from_dict(raw, "cfg.json")


def test_fixture_configs_and_family_defaults():
  pg1 = config_lib.from_json_file(FIXTURES / "paligemma-tiny" / "config.json")
  assert pg1 == config_lib.from_dict(TINY)
  assert (pg1.family, pg1.llm.attn_logits_softcap, pg1.llm.post_norms) == ("gemma", 0.0, False)
  assert pg1.llm.final_logits_softcap == 0.0 and pg1.num_patches == 16
  g2 = config_lib.from_dict(_with(family="gemma2"))
  assert g2.llm.attn_logits_softcap == 50.0 and g2.llm.post_norms is True
  assert g2.llm.query_pre_attn_norm == "rsqrt_head_dim"
  assert config_lib.from_dict(_with(family="gemma2", llm__attn_logits_softcap=0.0,
                                    llm__post_norms=False)).llm.post_norms is False
  pg2 = config_lib.from_json_file(FIXTURES / "paligemma2-tiny" / "config.json")
  pg2_30 = config_lib.from_json_file(FIXTURES / "paligemma2-tiny" / "config_softcap30.json")
  assert pg2 == g2
  assert pg2_30.llm == dataclasses.replace(pg2.llm, final_logits_softcap=30.0)


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_presets_are_valid(name):
  cfg = config_lib.preset(name)
  assert cfg.image_size % cfg.img.patch_size == 0
  assert cfg.llm.num_heads % cfg.llm.num_kv_heads == 0
  assert config_lib.from_dict(json.loads(cfg.to_json())) == cfg
  assert (cfg.family == "gemma2") == cfg.llm.post_norms == (cfg.llm.attn_logits_softcap == 50.0)
  assert cfg.num_patches == (cfg.image_size // 14) ** 2


def test_preset_details():
  assert config_lib.preset("paligemma2-28b-pt-224").llm.query_pre_attn_norm == (
      "rsqrt_emb_per_head")
  assert config_lib.preset("paligemma-3b-pt-448").num_patches == 1024
  with pytest.raises(UserError, match="paligemma-3b-pt-224"):
    config_lib.preset("paligemma-7b")


def test_from_json_file_errors(tmp_path):
  bad = tmp_path / "model.json"
  text = '{\n  "image_size": 56,\n  "img": {"patch_size": 14,}\n}\n'
  bad.write_text(text)
  try:
    json.loads(text)
  except json.JSONDecodeError as e:
    line = e.lineno
  assert line == 3
  with pytest.raises(UserError, match=f"^{re.escape(str(bad))}:3: invalid JSON"):
    config_lib.from_json_file(bad)
  with pytest.raises(UserError, match="not found"):
    config_lib.from_json_file(tmp_path / "absent.json")
  bad.write_text(json.dumps(_with(llm__num_layers=3)))
  with pytest.raises(UserError, match=f"^{re.escape(str(bad))}.*num_layers"):
    config_lib.from_json_file(bad)
