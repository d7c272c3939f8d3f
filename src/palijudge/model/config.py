"""Model configuration: one frozen dataclass per tower, presets, JSON I/O.

The JSON schema is the one the shared fixtures use:

  {"image_size": 224, "family": "gemma",
   "img": {"patch_size": 14, "width": 1152, "depth": 27, "mlp_dim": 4304,
           "num_heads": 16},
   "llm": {"vocab_size": 257152, "width": 2048, "depth": 18,
           "mlp_dim": 16384, "num_heads": 8, "num_kv_heads": 1,
           "head_dim": 256}}

`family` is "gemma" (PaliGemma 1) or "gemma2" (PaliGemma 2). Gemma 2 adds
`final_logits_softcap`, `attn_logits_softcap`, `post_norms` and
`query_pre_attn_norm` under `llm`; their defaults follow the family.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from palijudge.errors import UserError, where

FAMILIES = ("gemma", "gemma2")
QUERY_NORMS = ("rsqrt_head_dim", "rsqrt_emb_per_head")


@dataclasses.dataclass(frozen=True)
class ImgConfig:
  """SigLIP ViT encoder (no class token, no pooling)."""
  patch_size: int = 14
  width: int = 1152
  depth: int = 27
  mlp_dim: int = 4304
  num_heads: int = 16


@dataclasses.dataclass(frozen=True)
class LlmConfig:
  """Gemma decoder. `num_kv_heads < num_heads` is multi-/grouped-query."""
  vocab_size: int = 257152
  width: int = 2048
  depth: int = 18
  mlp_dim: int = 16384
  num_heads: int = 8
  num_kv_heads: int = 1
  head_dim: int = 256
  final_logits_softcap: float = 0.0
  attn_logits_softcap: float = 0.0
  post_norms: bool = False
  query_pre_attn_norm: str = "rsqrt_head_dim"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  image_size: int = 224
  family: str = "gemma"
  img: ImgConfig = ImgConfig()
  llm: LlmConfig = LlmConfig()

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.img.patch_size) ** 2

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)


_GEMMA2_DEFAULTS = dict(attn_logits_softcap=50.0, post_norms=True)


def _check_fields(cls, raw: dict, what: str) -> None:
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - known)
  if unknown:
    raise UserError(f"{what}: unknown field(s) {', '.join(unknown)}")


def _validate(cfg: ModelConfig, what: str) -> ModelConfig:
  def need(ok: bool, msg: str):
    if not ok:
      raise UserError(f"{what}: {msg}")
  for name, sub in (("img", cfg.img), ("llm", cfg.llm)):
    for f in dataclasses.fields(sub):
      v = getattr(sub, f.name)
      if f.type == "int":
        need(isinstance(v, int) and not isinstance(v, bool) and v > 0,
             f"{name}.{f.name} must be a positive integer, got {v!r}")
  need(cfg.family in FAMILIES, f"family must be one of {FAMILIES}, got {cfg.family!r}")
  need(isinstance(cfg.image_size, int) and cfg.image_size > 0,
       f"image_size must be a positive integer, got {cfg.image_size!r}")
  need(cfg.image_size % cfg.img.patch_size == 0,
       f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.img.patch_size}")
  need(cfg.img.width % cfg.img.num_heads == 0,
       f"img.width {cfg.img.width} is not divisible by img.num_heads {cfg.img.num_heads}")
  need(cfg.llm.num_heads % cfg.llm.num_kv_heads == 0,
       f"llm.num_heads {cfg.llm.num_heads} is not a multiple of num_kv_heads {cfg.llm.num_kv_heads}")
  need(cfg.llm.query_pre_attn_norm in QUERY_NORMS,
       f"llm.query_pre_attn_norm must be one of {QUERY_NORMS}")
  need(cfg.llm.final_logits_softcap >= 0 and cfg.llm.attn_logits_softcap >= 0,
       "soft-caps must be >= 0 (0 disables)")
  return cfg


def from_dict(raw: dict, what: str = "model config") -> ModelConfig:
  """Builds and validates a config; unknown fields are an error, not ignored."""
  if not isinstance(raw, dict):
    raise UserError(f"{what}: expected a JSON object")
  raw = dict(raw)
  _check_fields(ModelConfig, raw, what)
  family = raw.get("family", "gemma")
  img = raw.pop("img", {}) or {}
  llm = raw.pop("llm", {}) or {}
  _check_fields(ImgConfig, img, what + " (img)")
  _check_fields(LlmConfig, llm, what + " (llm)")
  if family == "gemma2":
    llm = {**_GEMMA2_DEFAULTS, **llm}
  cfg = ModelConfig(**raw, img=ImgConfig(**img), llm=LlmConfig(**llm))
  return _validate(cfg, what)


def from_json_file(path: str | os.PathLike) -> ModelConfig:
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{where(path)}: model config file not found") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{where(path, e.lineno)}: invalid JSON: {e.msg}") from None
  return from_dict(raw, where(path))


_SO400M = dict(patch_size=14, width=1152, depth=27, mlp_dim=4304, num_heads=16)
_GEMMA_2B = dict(vocab_size=257152, width=2048, depth=18, mlp_dim=16384,
                 num_heads=8, num_kv_heads=1, head_dim=256)
_GEMMA2_2B = dict(vocab_size=257152, width=2304, depth=26, mlp_dim=9216,
                  num_heads=8, num_kv_heads=4, head_dim=256)
_GEMMA2_9B = dict(vocab_size=257152, width=3584, depth=42, mlp_dim=14336,
                  num_heads=16, num_kv_heads=8, head_dim=256)
_GEMMA2_27B = dict(vocab_size=257152, width=4608, depth=46, mlp_dim=36864,
                   num_heads=32, num_kv_heads=16, head_dim=128,
                   query_pre_attn_norm="rsqrt_emb_per_head")
# The tiny default: small enough to train from scratch on 2 CPU cores in
# minutes, with the same layer types as the 3B model. The vocabulary is the
# tiny tokenizer's (`data.synthetic.TINY_VOCAB`; tests/test_data_synthetic.py ties them).
_TINY_IMG = dict(patch_size=14, width=64, depth=2, mlp_dim=128, num_heads=2)
_TINY_LLM = dict(vocab_size=1024, width=64, depth=2, mlp_dim=128,
                 num_heads=2, num_kv_heads=1, head_dim=32)

PRESETS: dict[str, dict] = {
    "paligemma-3b-pt-224": dict(image_size=224, img=_SO400M, llm=_GEMMA_2B),
    "paligemma-3b-pt-448": dict(image_size=448, img=_SO400M, llm=_GEMMA_2B),
    "paligemma2-3b-pt-224": dict(image_size=224, family="gemma2", img=_SO400M,
                                 llm=_GEMMA2_2B),
    "paligemma2-3b-pt-448": dict(image_size=448, family="gemma2", img=_SO400M,
                                 llm=_GEMMA2_2B),
    "paligemma2-10b-pt-224": dict(image_size=224, family="gemma2", img=_SO400M,
                                  llm=_GEMMA2_9B),
    "paligemma2-28b-pt-224": dict(image_size=224, family="gemma2", img=_SO400M,
                                  llm=_GEMMA2_27B),
    "tiny": dict(image_size=224, img=_TINY_IMG, llm=_TINY_LLM),
    "tiny-gemma2": dict(image_size=224, family="gemma2", img=_TINY_IMG,
                        llm=_TINY_LLM),
}


def preset(name: str) -> ModelConfig:
  if name not in PRESETS:
    raise UserError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
  return from_dict(PRESETS[name], f"preset {name}")
