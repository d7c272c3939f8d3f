"""Hugging Face transformers PaliGemma checkpoints in and out of the project's parameter tree.

A transformers folder holds `config.json` (a `PaliGemmaConfig`: a SigLIP
`vision_config`, a Gemma or Gemma 2 `text_config`) and safetensors shards
(`model.safetensors`, or `model-0000i-of-0000n.safetensors` listed by
`model.safetensors.index.json`). Every tensor has one home in big_vision's
tree (see `_rules`); the conventions that differ:

- torch Linear weights are (out, in): transposed, and split per head where
  big_vision keeps heads on their own axis (q/k/v/o, the ViT's attention);
- big_vision stores q, k, v in one `qkv_einsum` when there are as many kv heads
  as query heads, else `q_einsum` and `kv_einsum` (k, v) for MQA/GQA;
- the patch embedding is a conv kernel, OIHW in torch, HWIO here;
- Gemma 1's `post_attention_layernorm` is the norm *before* the MLP
  (`pre_ffw_norm`); in Gemma 2 the same name is the norm *after* attention,
  and `pre_/post_feedforward_layernorm` are the MLP's;
- both sides' RMSNorm compute x * (1 + scale), so scales are copied as they are;
- the output layer is tied to the token embedding on both sides.

Import streams shard by shard into one preallocated tree (one copy of the
model plus one tensor), in the stored dtype, and caches it as the project's
`.npz` under `cache/hf/` with provenance: repo, revision, sha256 of each
shard and the source config. Export (the other way, with the same `rules`)
is `hf_export`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from palijudge import checkpoint, files
from palijudge.errors import UserError, where
from palijudge.model import config as config_lib
from palijudge.model import paligemma as model_lib
from palijudge.params import Params, flatten, unflatten

CONFIG_FILE, INDEX_FILE, TOKENIZER_FILE = "config.json", "model.safetensors.index.json", "tokenizer.model"
SOURCE_FILE = "palijudge_source.json"  # {"repo", "revision"}: written by 01-download_models.py.
_TANH_GELUS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")  # All the tanh approximation.
# transformers' class defaults, for the fields a sparse hub config.json leaves out
# (tests/test_hf.py checks them against the installed transformers).
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
                       hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
TEXT_DEFAULTS = {
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                  num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16,
                  head_dim=256, rms_norm_eps=1e-6),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                   num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                   head_dim=256, rms_norm_eps=1e-6, query_pre_attn_scalar=256,
                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
}


def _json(path: Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise UserError(f"{where(path)}: not found") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{where(path)}: cannot read ({e})") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{where(path, e.lineno)}: invalid JSON: {e.msg}") from None


# --- Config ------------------------------------------------------------------

def config_from_hf(raw: dict, what: str) -> config_lib.ModelConfig:
  """The project's config of a transformers PaliGemmaConfig dict (UserError if it cannot run it)."""
  if not isinstance(raw, dict) or raw.get("model_type") != "paligemma":
    got = raw.get("model_type") if isinstance(raw, dict) else None
    raise UserError(f"{what}: not a PaliGemma config (model_type {got!r})")
  vis = {**VISION_DEFAULTS, **(raw.get("vision_config") or {})}
  text = dict(raw.get("text_config") or {})
  family = text.get("model_type", "gemma")
  if family not in TEXT_DEFAULTS:
    raise UserError(f"{what}: text_config.model_type {family!r} is neither gemma nor gemma2")
  text = {**TEXT_DEFAULTS[family], **text}

  def need(ok: bool, msg: str):
    if not ok:
      raise UserError(f"{what}: {msg}, which this project cannot run")
  act = text.get("hidden_activation") or text.get("hidden_act") or "gelu_pytorch_tanh"
  need(act in _TANH_GELUS and vis["hidden_act"] in _TANH_GELUS, "an activation other than tanh-GELU")
  need(vis["layer_norm_eps"] == 1e-6 and text["rms_norm_eps"] == 1e-6, "a norm epsilon other than 1e-6")
  rope = (text.get("rope_parameters") or {}).get("rope_theta", text.get("rope_theta", 10000.0))
  need(float(rope) == 10000.0, f"RoPE base {rope}")
  need(vis["num_channels"] == 3, "an image with other than 3 channels")
  width, heads = text["hidden_size"], text["num_attention_heads"]
  need(raw.get("projection_dim", width) == width, "a projection_dim other than the text width")
  llm = dict(vocab_size=text["vocab_size"], width=width, depth=text["num_hidden_layers"],
             mlp_dim=text["intermediate_size"], num_heads=heads,
             num_kv_heads=text["num_key_value_heads"], head_dim=text["head_dim"])
  if family == "gemma2":
    scalar = text["query_pre_attn_scalar"]
    norms = {width // heads: "rsqrt_emb_per_head", text["head_dim"]: "rsqrt_head_dim"}  # Equal: head_dim.
    need(scalar in norms, f"query_pre_attn_scalar {scalar}")
    llm.update(final_logits_softcap=float(text["final_logit_softcapping"] or 0.0),
               attn_logits_softcap=float(text["attn_logit_softcapping"] or 0.0),
               post_norms=True, query_pre_attn_norm=norms[scalar])
  img = dict(patch_size=vis["patch_size"], width=vis["hidden_size"], depth=vis["num_hidden_layers"],
             mlp_dim=vis["intermediate_size"], num_heads=vis["num_attention_heads"])
  return config_lib.from_dict(dict(image_size=vis["image_size"], family=family, img=img, llm=llm),
                              what)


def config_to_hf(cfg: config_lib.ModelConfig, image_token_index: int,
                 special: dict[str, int], base: dict | None = None) -> dict:
  """config.json of `cfg` for transformers. `base` (an imported folder's own config) keeps
  what the project does not model (sliding window, token ids, names...); the shapes and caps
  always come from `cfg`."""
  c, v = cfg.llm, cfg.img
  ids = {f"{k}_token_id": special[k] for k in ("bos", "eos", "pad")}
  text = dict(model_type=cfg.family, vocab_size=c.vocab_size, hidden_size=c.width,
              intermediate_size=c.mlp_dim, num_hidden_layers=c.depth,
              num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
              head_dim=c.head_dim)
  text_extra = dict(hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh",
                    rms_norm_eps=1e-6, rope_theta=10000.0, num_image_tokens=cfg.num_patches,
                    tie_word_embeddings=True, **ids)
  if cfg.family == "gemma2":
    scalar = c.head_dim if c.query_pre_attn_norm == "rsqrt_head_dim" else c.width // c.num_heads
    text.update(query_pre_attn_scalar=scalar, final_logit_softcapping=c.final_logits_softcap or None,
                attn_logit_softcapping=c.attn_logits_softcap or None)
    # big_vision attends globally in every layer: no sliding-window layers.
    text_extra.update(layer_types=["full_attention"] * c.depth)
  vision = dict(model_type="siglip_vision_model", hidden_size=v.width, intermediate_size=v.mlp_dim,
                num_hidden_layers=v.depth, num_attention_heads=v.num_heads,
                patch_size=v.patch_size, image_size=cfg.image_size, num_channels=3,
                projection_dim=c.width)
  vision_extra = dict(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False)
  top = dict(architectures=["PaliGemmaForConditionalGeneration"], model_type="paligemma",
             projection_dim=c.width, hidden_size=c.width, vocab_size=c.vocab_size)
  top_extra = dict(image_token_index=image_token_index, tie_word_embeddings=True, **ids)
  if base:  # An imported checkpoint's own settings replace the defaults above.
    top_extra, text_extra, vision_extra = (base, base.get("text_config") or {},
                                           base.get("vision_config") or {})
  return {**top_extra, **top, "text_config": {**text_extra, **text},
          "vision_config": {**vision_extra, **vision}}


# --- Tensor names and layouts ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Slot:
  """Where one transformers tensor lives in the project's tree, and how it is laid out there."""
  name: str                      # Project leaf, e.g. llm/layers/attn/kv_einsum/w.
  index: tuple[int, ...]         # Layer (and k|v or gate|up part) within that leaf.
  to_project: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


_SAME = (lambda a: a, lambda a: a)
_T = (lambda a: a.T, lambda a: a.T)
_PREFIXES = ((re.compile(r"^(model\.)?vision_tower\.(vision_model\.)?"), "vision."),
             (re.compile(r"^(model\.)?multi_modal_projector\."), "proj."),
             (re.compile(r"^(language_model\.)?lm_head\."), "lm_head."),
             (re.compile(r"^(model\.language_model\.|language_model\.model\.)"), "text."))
# The hub's names (the layout google/paligemma-* checkpoints use).
_HUB_PREFIX = {"vision.": "vision_tower.vision_model.", "proj.": "multi_modal_projector.",
               "text.": "language_model.model."}
UNUSED = re.compile(r"^vision\.head\.")  # SigLIP's pooling head: PaliGemma never reads it.


def canonical(key: str) -> str | None:
  """A tensor's name without the transformers-version-specific prefixes, or None if unknown."""
  for pattern, short in _PREFIXES:
    m = pattern.match(key)
    if m:
      return short + key[m.end():]
  return None


def hub_name(canon: str) -> str:
  short = canon.split(".", 1)[0] + "."
  return _HUB_PREFIX[short] + canon[len(short):]


def _heads_in(n: int, h: int):
  """torch (n*h, D) <-> big_vision (n, D, h): a q/k/v projection split per head."""
  return (lambda a: a.reshape(n, h, -1).transpose(0, 2, 1),
          lambda a: a.transpose(0, 2, 1).reshape(n * h, -1))


def _vit_rules(cfg: config_lib.ModelConfig) -> dict[str, Slot]:
  v = cfg.img
  n, h, w = v.num_heads, v.width // v.num_heads, v.width
  qkv = (lambda a: a.T.reshape(w, n, h), lambda a: a.reshape(w, n * h).T)
  bias = (lambda a: a.reshape(n, h), lambda a: a.reshape(n * h))
  out = (lambda a: a.T.reshape(n, h, w), lambda a: a.reshape(n * h, w).T)
  blk, mha = "img/Transformer/encoderblock/", "MultiHeadDotProductAttention_0/"
  per_layer = {"layer_norm1.weight": ("LayerNorm_0/scale", _SAME),
               "layer_norm1.bias": ("LayerNorm_0/bias", _SAME),
               "layer_norm2.weight": ("LayerNorm_1/scale", _SAME),
               "layer_norm2.bias": ("LayerNorm_1/bias", _SAME),
               "self_attn.out_proj.weight": (mha + "out/kernel", out),
               "self_attn.out_proj.bias": (mha + "out/bias", _SAME),
               "mlp.fc1.weight": ("MlpBlock_0/Dense_0/kernel", _T),
               "mlp.fc1.bias": ("MlpBlock_0/Dense_0/bias", _SAME),
               "mlp.fc2.weight": ("MlpBlock_0/Dense_1/kernel", _T),
               "mlp.fc2.bias": ("MlpBlock_0/Dense_1/bias", _SAME)}
  for hf, ours in (("q", "query"), ("k", "key"), ("v", "value")):
    per_layer[f"self_attn.{hf}_proj.weight"] = (f"{mha}{ours}/kernel", qkv)
    per_layer[f"self_attn.{hf}_proj.bias"] = (f"{mha}{ours}/bias", bias)
  rules = {f"vision.encoder.layers.{i}.{k}": Slot(blk + name, (i,), *fns)
           for i in range(v.depth) for k, (name, fns) in per_layer.items()}
  conv = (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
  pos = (lambda a: a[None], lambda a: a[0])
  rules.update({
      "vision.embeddings.patch_embedding.weight": Slot("img/embedding/kernel", (), *conv),
      "vision.embeddings.patch_embedding.bias": Slot("img/embedding/bias", (), *_SAME),
      "vision.embeddings.position_embedding.weight": Slot("img/pos_embedding", (), *pos),
      "vision.post_layernorm.weight": Slot("img/Transformer/encoder_norm/scale", (), *_SAME),
      "vision.post_layernorm.bias": Slot("img/Transformer/encoder_norm/bias", (), *_SAME),
      "proj.linear.weight": Slot("img/head/kernel", (), *_T),
      "proj.linear.bias": Slot("img/head/bias", (), *_SAME)})
  return rules


def _llm_rules(cfg: config_lib.ModelConfig) -> dict[str, Slot]:
  c, a = cfg.llm, "llm/layers/attn/"
  fused = c.num_heads == c.num_kv_heads  # big_vision's qkv_einsum (see model/gemma.py).
  q = _heads_in(c.num_heads, c.head_dim)
  kv = _heads_in(c.num_kv_heads, c.head_dim)
  o = (lambda x: x.T.reshape(c.num_heads, c.head_dim, c.width),
       lambda x: x.reshape(c.num_heads * c.head_dim, c.width).T)
  norms = ({"post_attention_layernorm": "post_attention_norm",
            "pre_feedforward_layernorm": "pre_ffw_norm",
            "post_feedforward_layernorm": "post_ffw_norm"} if c.post_norms
           else {"post_attention_layernorm": "pre_ffw_norm"})
  per_layer = {"input_layernorm.weight": ("llm/layers/pre_attention_norm/scale", (), _SAME),
               "self_attn.q_proj.weight": ((a + "qkv_einsum/w", (0,), q) if fused
                                           else (a + "q_einsum/w", (), q)),
               "self_attn.k_proj.weight": (a + ("qkv_einsum/w" if fused else "kv_einsum/w"),
                                           (1,) if fused else (0,), kv),
               "self_attn.v_proj.weight": (a + ("qkv_einsum/w" if fused else "kv_einsum/w"),
                                           (2,) if fused else (1,), kv),
               "self_attn.o_proj.weight": (a + "attn_vec_einsum/w", (), o),
               "mlp.gate_proj.weight": ("llm/layers/mlp/gating_einsum", (0,), _T),
               "mlp.up_proj.weight": ("llm/layers/mlp/gating_einsum", (1,), _T),
               "mlp.down_proj.weight": ("llm/layers/mlp/linear", (), _T)}
  per_layer.update({f"{hf}.weight": (f"llm/layers/{ours}/scale", (), _SAME)
                    for hf, ours in norms.items()})
  rules = {f"text.layers.{i}.{k}": Slot(name, (i,) + part, *fns)
           for i in range(c.depth) for k, (name, part, fns) in per_layer.items()}
  rules["text.embed_tokens.weight"] = Slot("llm/embedder/input_embedding", (), *_SAME)
  rules["text.norm.weight"] = Slot("llm/final_norm/scale", (), *_SAME)
  return rules


def rules(cfg: config_lib.ModelConfig) -> dict[str, Slot]:
  """Every transformers tensor (canonical name) of `cfg` and its slot in the project's tree."""
  return {**_vit_rules(cfg), **_llm_rules(cfg)}


# --- Import ------------------------------------------------------------------------

def shards(folder: Path) -> list[Path]:
  """The safetensors files of a folder: those its index names, else every *.safetensors."""
  index = folder / INDEX_FILE
  if index.is_file():
    weight_map = _json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise UserError(f"{where(index)}: no weight_map")
    names = sorted(set(map(str, weight_map.values())))
    bad = [n for n in names if Path(n).name != n or not (folder / n).is_file()]
    if bad:
      raise UserError(f"{where(index)}: names shard {bad[0]}, which is not in {folder}")
    return [folder / n for n in names]
  found = sorted(folder.glob("*.safetensors"))
  if not found:
    raise UserError(f"{where(folder)}: no .safetensors weights in this transformers folder")
  return found


def _fill(out: dict[str, np.ndarray], shapes: dict, slot: Slot, a: np.ndarray, key: str,
          path: Path) -> None:
  v = slot.to_project(a)
  want = tuple(shapes[slot.name].shape)[len(slot.index):]
  if v.shape != want:
    raise UserError(f"{where(path)}: {key} has shape {tuple(a.shape)}, which does not fit "
                    f"{slot.name} {want} of config.json's model")
  if slot.name not in out:
    out[slot.name] = np.empty(shapes[slot.name].shape, a.dtype)
  out[slot.name][slot.index] = v


def read_tree(folder: str | os.PathLike, cfg: config_lib.ModelConfig) -> Params:
  """Every tensor of the folder's shards, in the project's layout and the stored dtypes.

  Reads one tensor at a time into its place in a preallocated tree; a missing,
  unknown or mis-shaped tensor is one UserError naming it. An `lm_head` (older
  exports store the tied output layer too) must equal the embedding.
  """
  from safetensors import SafetensorError, safe_open  # pylint: disable=import-outside-toplevel
  folder = Path(folder)
  table, shapes = rules(cfg), flatten(model_lib.param_shapes(cfg))
  out, seen, heads = {}, set(), []
  for path in shards(folder):
    try:
      with safe_open(os.fspath(path), framework="np") as f:
        for key in f.keys():
          canon = canonical(key)
          if canon == "lm_head.weight":
            heads.append((path, key))  # Compared once the embedding is in.
          elif canon is None or not UNUSED.match(canon):
            if canon not in table:
              raise UserError(f"{where(path)}: unexpected tensor {key} for a "
                              f"{cfg.family} PaliGemma")
            _fill(out, shapes, table[canon], f.get_tensor(key), key, path)
            seen.add(canon)
    except (OSError, SafetensorError) as e:
      raise UserError(f"{where(path)}: not a readable safetensors file ({e})") from None
  missing = sorted(set(table) - seen)
  if missing:
    raise UserError(f"{where(folder)}: {len(missing)} tensor(s) missing, e.g. {missing[0]}")
  for path, key in heads:
    with safe_open(os.fspath(path), framework="np") as f:
      if not np.array_equal(f.get_tensor(key), out["llm/embedder/input_embedding"]):
        raise UserError(f"{where(path)}: {key} differs from the token embedding; the project "
                        f"ties them, as PaliGemma does")
  return unflatten(out)


def source_of(folder: Path, raw: dict) -> dict:
  """repo and revision of a downloaded folder (palijudge_source.json), else what config.json says."""
  src = _json(folder / SOURCE_FILE) if (folder / SOURCE_FILE).is_file() else {}
  src = src if isinstance(src, dict) else {}
  return {"repo": str(src.get("repo") or raw.get("_name_or_path") or folder.name),
          "revision": src.get("revision")}


def import_folder(folder: str | os.PathLike, cache_dir: str | os.PathLike) -> str:
  """The project's .npz of a transformers folder, converted once and cached in cache_dir/hf/.

  The cached file is reused while every shard's sha256 is the one it was made from.
  """
  folder = Path(folder).resolve()
  raw = _json(folder / CONFIG_FILE)
  cfg = config_from_hf(raw, where(folder / CONFIG_FILE))
  digests = {p.name: files.sha256_remembered(p) for p in shards(folder)}
  key = files.sha256_text(json.dumps([digests, raw], sort_keys=True))[:12]
  src = source_of(folder, raw)
  name = re.sub(r"[^A-Za-z0-9._-]+", "-", src["repo"]).strip("-.") or "model"
  target = Path(cache_dir) / "hf" / f"{name}-{key}.npz"
  if target.is_file() and checkpoint.read_meta(target).get("hf", {}).get("shards") == digests:
    return os.fspath(target)
  tok = folder / TOKENIZER_FILE
  meta = {"hf": {**src, "folder": os.fspath(folder), "shards": digests, "config": raw},
          **({"tokenizer": os.fspath(tok)} if tok.is_file() else {})}
  checkpoint.save(target, read_tree(folder, cfg), cfg, meta)
  return os.fspath(target)
