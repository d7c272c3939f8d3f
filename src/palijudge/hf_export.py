"""Export to a transformers PaliGemma folder: config, safetensors, tokenizer, processor config.

Writes the hub's tensor names (the layout `google/paligemma-*` use, which
transformers 4 and 5 both load) through `hf.rules`, the sentencepiece
tokenizer with what GemmaTokenizer / PaliGemmaProcessor read, into a new
folder that appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from palijudge.errors import UserError, where
from palijudge.hf import CONFIG_FILE, INDEX_FILE, TOKENIZER_FILE, config_to_hf, hub_name, rules
from palijudge.model import config as config_lib
from palijudge.params import Params, flatten

SHARD_BYTES = 2 << 30  # At most this many bytes per safetensors shard.


def _plan(flat: dict, cfg: config_lib.ModelConfig, dtype, shard_bytes: int):
  """[[(hub name, getter), ...] per shard], each shard under shard_bytes (one tensor at
  least), in a stable order. A getter builds its transformers tensor from `flat` (numpy)
  when called, so a shard's tensors exist only while it is written."""
  plan, size = [[]], 0
  for canon, slot in rules(cfg).items():
    def get(slot=slot):
      return np.ascontiguousarray(slot.to_hf(np.asarray(flat[slot.name][slot.index])))
    leaf = flat[slot.name]
    n = int(np.prod(leaf.shape[len(slot.index):])) * np.dtype(dtype or leaf.dtype).itemsize
    if plan[-1] and size + n > shard_bytes:
      plan.append([])
      size = 0
    plan[-1].append((hub_name(canon), get))
    size += n
  return plan


def _tokenizer_files(tok_path: str, cfg: config_lib.ModelConfig) -> tuple[dict, dict[str, int]]:
  """{file name: JSON} for GemmaTokenizer / PaliGemmaProcessor, and the special ids."""
  # sentencepiece itself: data.tokenizer sits above this layer (tests/test_layers.py), and
  # the model this tokenizer belongs to was loaded through Tokenizer.load already.
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  sp = spm.SentencePieceProcessor(model_file=os.fspath(tok_path))
  ids = dict(pad=sp.pad_id(), eos=sp.eos_id(), bos=sp.bos_id(), unk=sp.unk_id())
  pieces = {f"{k}_token": sp.id_to_piece(i) for k, i in ids.items()}
  # mask_token None: GemmaTokenizer would otherwise add a "<mask>" the vocabulary may lack,
  # moving "<image>" (added by the processor after the vocabulary) off image_token_index.
  tok_cfg = dict(tokenizer_class="GemmaTokenizer", processor_class="PaliGemmaProcessor",
                 add_bos_token=True, add_eos_token=False, clean_up_tokenization_spaces=False,
                 spaces_between_special_tokens=False, mask_token=None, **pieces)
  size = cfg.image_size
  pre = dict(image_processor_type="SiglipImageProcessor", processor_class="PaliGemmaProcessor",
             image_seq_length=cfg.num_patches, size={"height": size, "width": size},
             do_resize=True, resample=2, do_rescale=True, rescale_factor=1 / 255,
             do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True)
  gen = dict(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
  out = {"tokenizer_config.json": tok_cfg, "special_tokens_map.json": pieces,
         "preprocessor_config.json": pre, "generation_config.json": gen}
  return out, {**ids, "vocab": sp.vocab_size()}


def check_export_folder(out_dir: str | os.PathLike) -> None:
  """UserError now unless `out_dir` is a new or empty folder (an export never writes over files)."""
  out = Path(out_dir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise UserError(f"{where(out)}: already exists; export into a new (or empty) folder")


def export_folder(out_dir: str | os.PathLike, params: Params, cfg: config_lib.ModelConfig,
                  tokenizer: str, meta: dict | None = None, dtype=None,
                  shard_bytes: int = SHARD_BYTES) -> None:
  """A transformers-loadable folder at `out_dir` (which must not exist, or be empty).

  Written into a temp folder beside it and renamed into place at the end, so a
  failed export leaves nothing behind. `params`: plain weights (LoRA merged).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  out = Path(out_dir)
  check_export_folder(out)
  tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    tmp.mkdir(parents=True)
    docs, ids = _tokenizer_files(tokenizer, cfg)
    base = ((meta or {}).get("hf") or {}).get("config")
    docs[CONFIG_FILE] = config_to_hf(cfg, ids["vocab"], ids, base)
    flat = flatten(params)
    docs[CONFIG_FILE]["dtype"] = str(np.dtype(dtype or flat["llm/embedder/input_embedding"].dtype))
    plan = _plan(flat, cfg, dtype, shard_bytes)
    weight_map, total = {}, 0
    for i, group in enumerate(plan):
      shard = "model.safetensors" if len(plan) == 1 else f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
      tensors = {name: get() if dtype is None else get().astype(dtype) for name, get in group}
      save_file(tensors, os.fspath(tmp / shard), metadata={"format": "pt"})
      total += sum(t.nbytes for t in tensors.values())
      weight_map.update({name: shard for name in tensors})
      del tensors
    if len(plan) > 1:
      docs[INDEX_FILE] = {"metadata": {"total_size": total}, "weight_map": weight_map}
    for name, doc in docs.items():
      (tmp / name).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
    if out.is_dir():
      out.rmdir()
    os.replace(tmp, out)
  except OSError as e:
    raise UserError(f"{where(out)}: cannot write the export ({e.strerror or e})") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
