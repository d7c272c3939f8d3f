"""palijudge.hf: transformers PaliGemma checkpoints in and out, checked against transformers itself.

Two directions, each on tiny random models in float32 on CPU:
- HF -> project: PaliGemma 1 (MQA, and MHA with big_vision's fused qkv) and
  PaliGemma 2 (GQA, attention and final soft-capping) built and saved by
  transformers, imported through `--model DIR`, scored by the project;
- project -> HF: the `tiny` and `tiny-gemma2` presets (and a GQA, soft-capped
  variant) exported and scored by transformers.
Both compare p(yes) of the first answer token (within 1e-5), the logits there,
and greedy answers (identical), on the inputs transformers' own processor
builds. Differences by design, each checked below:
- the processor resizes the uint8 image with Pillow and rounds back to uint8,
  the project resizes in float (big_vision): within one uint8 step when a
  resize happens, equal (to float rounding) when none does;
- with a final-logit soft-cap (Gemma 2), transformers caps every logit, the
  project scores before the cap (as big_vision's loss does): p(yes) then
  matches transformers after capping the project's two logits;
- transformers counts positions from 1, big_vision from 0 (RoPE only sees
  differences: equal up to rounding).
Round trips are bit-identical in f32.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from palijudge import checkpoint, files, hf, hf_export, loader
from palijudge.data import images, synthetic
from palijudge.data.tokenizer import pad_batch, tokenize
from palijudge.errors import UserError
from palijudge.model import config as config_lib
from palijudge.model import lora
from palijudge.model import paligemma as model_lib
from palijudge.params import flatten, unflatten

from testing import assert_one_line_error, forward_logits, run_script

PROMPTS = ("Is this image appropriate based on Federal Food, Drug, and Cosmetic Act?",
           "Is this a safe product?", "caption en")
P_TOL = 1e-5      # p(yes), both ways (the bar).
LOGIT_TOL = 1e-4  # Logits at the answer position (the fixtures' f32 bar).
MAX_NEW = 4
# What the tests measured, gathered for the report line printed at the end.
MEASURED: dict[str, float] = {}


def _note(key: str, value: float) -> None:
  MEASURED[key] = max(MEASURED.get(key, 0.0), float(value))


@pytest.fixture(scope="module", autouse=True)
def _report():
  yield
  print("\nlargest differences measured: " + ", ".join(f"{k} {v:.2e}" for k, v in
                                                        sorted(MEASURED.items())))


# --- Building tiny models ------------------------------------------------------------

def _spread_torch(model, seed: int) -> None:
  """Random weights large enough that p(yes) moves (tiny inits give ~0.5 for everything)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 1 / math.sqrt(p.shape[-1]) if p.ndim > 1 else 0.3
      p.copy_(torch.randn(p.shape, generator=g) * scale * (0.5 if "embed" in name else 1.5))


def _spread_np(params, seed: int):
  rng = np.random.default_rng(seed)
  def one(name, a):
    scale = 1 / math.sqrt(a.shape[-1]) if a.ndim > 1 else 0.3
    return (rng.standard_normal(a.shape) * scale * (0.5 if "embed" in name else 1.5)
            ).astype(np.float32)
  return unflatten({k: one(k, np.asarray(v)) for k, v in flatten(params).items()})


HF_CONFIGS = {
    "pg1-mqa": dict(family="gemma", heads=4, kv=1),
    "pg1-mha": dict(family="gemma", heads=2, kv=2),  # big_vision's fused qkv_einsum.
    "pg2-gqa": dict(family="gemma2", heads=4, kv=2),  # Soft-capped: attention 50, final 30.
}


def _hf_processor(folder: Path, tok_path: Path, size: int, n_patches: int):
  """transformers' own processor for a tiny model: GemmaTokenizer from the sentencepiece file,
  SigLIP image processor (bilinear, mean/std 0.5), as a user would assemble it."""
  from transformers import GemmaTokenizer, PaliGemmaProcessor, SiglipImageProcessor
  tok_dir = folder / "tok"
  tok_dir.mkdir()
  shutil.copyfile(tok_path, tok_dir / "tokenizer.model")
  sp_names = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                  mask_token=None)  # As in Gemma's vocabulary: no "<mask>" added after it.
  (tok_dir / "tokenizer_config.json").write_text(json.dumps(sp_names))
  tok = GemmaTokenizer.from_pretrained(tok_dir)
  shutil.rmtree(tok_dir)
  ip = SiglipImageProcessor(size={"height": size, "width": size}, resample=2,
                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
  ip.image_seq_length = n_patches
  proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
  proc.save_pretrained(folder)
  shutil.copyfile(tok_path, folder / "tokenizer.model")
  return proc


def make_hf_model(folder: Path, kind: str, tok_path: Path, seed: int = 0) -> Path:
  """A random tiny PaliGemma saved by transformers (weights, config, processor, tokenizer)."""
  from transformers import (Gemma2Config, GemmaConfig, PaliGemmaConfig,
                            PaliGemmaForConditionalGeneration, SiglipVisionConfig)
  spec = HF_CONFIGS[kind]
  folder.mkdir(parents=True)
  proc = _hf_processor(folder, tok_path, 56, 16)
  vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, patch_size=14, image_size=56,
                              vision_use_head=False)
  text_args = dict(vocab_size=1088, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=spec["heads"], num_key_value_heads=spec["kv"], head_dim=16,
                   bos_token_id=2, eos_token_id=1, pad_token_id=0)
  text = (Gemma2Config(**text_args, query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0) if spec["family"] == "gemma2"
          else GemmaConfig(**text_args))
  config = PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=64,
                           hidden_size=64, vocab_size=1088,
                           image_token_index=proc.image_token_id)
  torch.manual_seed(seed)
  model = PaliGemmaForConditionalGeneration(config)
  _spread_torch(model, seed)
  model.save_pretrained(folder)
  return folder


def make_project_model(cache: Path, tok: Path, preset: str, override: dict | None = None,
                       seed: int = 0) -> loader.ModelSpec:
  """A tiny preset's model (or a variant), spread weights, saved as .npz with its tokenizer."""
  cfg = config_lib.preset(preset)
  if override:
    raw = cfg.to_dict()
    raw["llm"].update(override)
    cfg = config_lib.from_dict(raw)
  params = _spread_np(model_lib.init_params(cfg, seed), seed)
  path = cache / f"{preset}-{seed}{'-x' if override else ''}.npz"
  checkpoint.save(path, params, cfg, {"tokenizer": os.fspath(tok)})
  return loader.resolve(str(path), cache_dir=str(cache))


# --- Scoring both ways -----------------------------------------------------------------

def _rgb_images(size: int, seed: int = 0) -> list[np.ndarray]:
  """An image at the model's size (no resize) and one that needs resizing."""
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8)] + [
      rng.integers(0, 256, (size + 17, size - 9, 3), dtype=np.uint8)]


def _hf_load(folder):
  from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor
  model = PaliGemmaForConditionalGeneration.from_pretrained(
      folder, dtype=torch.float32, attn_implementation="eager").eval()
  return model, PaliGemmaProcessor.from_pretrained(folder)


def _ours(lm: loader.LoadedModel, rows) -> dict[str, np.ndarray]:
  """The project's side on every (image, prompt) row at once, as evaluation batches them."""
  toks = [tokenize(lm.tok, prompt) for _, prompt in rows]
  padded = pad_batch(toks, max(map(len, toks)))
  pixels = np.stack([images.preprocess(rgb, lm.cfg.image_size) for rgb, _ in rows])
  x = model_lib.Inputs(*(jnp.asarray(padded[k]) for k in ("text", "mask_ar", "mask_input")),
                       jnp.asarray(pixels))
  last = jnp.asarray(padded["prefix_len"])
  yn = np.asarray(model_lib.yes_no_logits(lm.model, lm.params, x, last, jnp.asarray(lm.yes_no_ids)))
  plain = lora.merge(lm.params, lm.model.lora_alpha)  # The full forward pass takes plain weights.
  logits = forward_logits(lm.model, plain, x.image, x.text, x.mask_ar, x.mask_input)[2]
  at = np.asarray(logits)[np.arange(len(rows)), padded["prefix_len"] - 1]
  dec = model_lib.decode(lm.model, lm.params, x, MAX_NEW, lm.tok.eos_id).tokens_BxN
  return dict(tokens=toks, pixels=pixels, yes_no=yn, logits=np.asarray(
      model_lib.capped_logits(lm.cfg, jnp.asarray(at))), greedy=dec)


def compare(lm: loader.LoadedModel, hf_model, proc) -> None:
  """transformers' processor inputs == the project's; p(yes), logits, greedy answers agree."""
  size, cfg, (yes, no), eos = lm.cfg.image_size, lm.cfg, lm.yes_no_ids, lm.tok.eos_id
  rows = [(rgb, prompt) for rgb in _rgb_images(size) for prompt in PROMPTS]
  ours = _ours(lm, rows)
  p_ours = model_lib.p_yes(np.asarray(model_lib.capped_logits(cfg, jnp.asarray(ours["yes_no"]))))
  for b, (rgb, prompt) in enumerate(rows):
    batch = proc(images=Image.fromarray(rgb), text="<image>" + prompt, return_tensors="pt")
    # The <image> layout: P image tokens, then [bos] + prompt + "\n", all in the prefix.
    want_ids = [proc.image_token_id] * cfg.num_patches + ours["tokens"][b].tokens.tolist()
    assert batch["input_ids"][0].tolist() == want_ids
    assert batch["token_type_ids"][0].tolist() == [0] * len(want_ids)
    pixels = ours["pixels"][b]
    gap = np.abs(batch["pixel_values"][0].numpy().transpose(1, 2, 0) - pixels).max()
    if rgb.shape[:2] == (size, size):
      assert gap <= 1e-6, gap  # No resize: x / 255 * 2 - 1 vs x / 127.5 - 1.
      _note("pixel gap without a resize", gap)
    else:  # By design: transformers resizes the uint8 image and rounds.
      assert gap <= 1 / 127.5 + 1e-6, gap
      _note("pixel gap after a resize (uint8 rounding)", gap)
    # The models, on the same (project-preprocessed) pixels.
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  token_type_ids=batch["token_type_ids"],
                  pixel_values=torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()))
    with torch.no_grad():
      theirs = hf_model(**inputs).logits[0, -1].numpy()
      gen = hf_model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                              eos_token_id=eos, pad_token_id=lm.tok.pad_id)
    p_theirs = float(torch.softmax(torch.from_numpy(theirs[[yes, no]]), -1)[0])
    assert abs(p_ours[b] - p_theirs) <= P_TOL, (prompt, b, p_ours[b], p_theirs)
    _note("p(yes)", abs(p_ours[b] - p_theirs))
    if cfg.llm.final_logits_softcap:  # By design: the project's own p(yes) is before the cap.
      _note("p(yes) before vs after the final soft-cap (by design)",
            abs(float(model_lib.p_yes(ours["yes_no"][b:b + 1])[0]) - p_theirs))
    assert np.abs(ours["logits"][b] - theirs).max() <= LOGIT_TOL
    _note("logits", np.abs(ours["logits"][b] - theirs).max())
    cut = lambda t: t[:t.index(eos) + 1] if eos in t else t
    mine, other = ours["greedy"][b].tolist(), gen[0, len(want_ids):].tolist()
    assert cut(mine) == cut(other), (mine, other)
  # Inputs matter and p(yes) is not saturated, so the 1e-5 check above can fail.
  assert np.std(p_ours) > 0.02 and 0.05 < np.median(p_ours) < 0.95, p_ours


# --- HF -> project -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
  return synthetic.write_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_folder(request, tmp_path_factory, tok_path):
  return make_hf_model(tmp_path_factory.mktemp("hf") / request.param, request.param, tok_path)


def test_hf_model_scored_by_the_project(hf_folder, tmp_path):
  spec = loader.resolve(str(hf_folder), cache_dir=str(tmp_path))  # --model DIR
  assert spec.weights.startswith(str(tmp_path / "hf")) and spec.tokenizer.endswith("tokenizer.model")
  lm = loader.load(spec, trainable="attn", param_dtype="float32", compute="float32")
  compare(lm, *_hf_load(hf_folder))


def _hf_tensors(folder: Path) -> dict[str, np.ndarray]:
  out = {}
  for shard in hf.shards(folder):
    with safe_open(os.fspath(shard), framework="np") as f:
      out.update({hf.canonical(k): f.get_tensor(k) for k in f.keys()})
  return out


def test_round_trip_hf_project_hf_is_bit_identical(hf_folder, tmp_path):
  from transformers import PaliGemmaConfig
  npz = hf.import_folder(hf_folder, tmp_path)
  spec = loader.resolve(npz, cache_dir=str(tmp_path))
  lm = loader.load(spec, trainable="none-$", param_dtype="auto")
  out = tmp_path / "again"
  hf_export.export_folder(out, lm.params, lm.cfg, spec.tokenizer, checkpoint.read_meta(npz),
                   shard_bytes=60_000)  # Several shards and an index.
  assert (out / hf.INDEX_FILE).is_file()
  a, b = _hf_tensors(hf_folder), _hf_tensors(out)
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype == np.float32 and np.array_equal(a[k], b[k]), k
  skip = {"transformers_version", "_name_or_path", "dtype", "torch_dtype"}
  conf = lambda f: {k: v for k, v in PaliGemmaConfig.from_pretrained(f).to_dict().items()
                    if k not in skip}
  assert conf(hf_folder) == conf(out)


def test_import_provenance_and_cache(hf_folder, tmp_path):
  (hf_folder / hf.SOURCE_FILE).write_text(json.dumps({"repo": "me/tiny", "revision": "abc123"}))
  try:
    first = hf.import_folder(hf_folder, tmp_path)
    stamp = os.stat(first).st_mtime_ns
    meta = checkpoint.read_meta(first)["hf"]
    assert meta["repo"] == "me/tiny" and meta["revision"] == "abc123"
    assert meta["shards"] == {p.name: files.sha256(p) for p in hf.shards(hf_folder)}
    assert meta["config"] == json.loads((hf_folder / "config.json").read_text())
    assert hf.import_folder(hf_folder, tmp_path) == first
    assert os.stat(first).st_mtime_ns == stamp  # Reused, not converted again.
  finally:
    (hf_folder / hf.SOURCE_FILE).unlink()


# --- project -> HF -------------------------------------------------------------------

PROJECT_MODELS = {"tiny": ("tiny", None), "tiny-gemma2": ("tiny-gemma2", None),
                  "gqa-softcap": ("tiny-gemma2", dict(num_heads=4, num_kv_heads=2, head_dim=16,
                                                      final_logits_softcap=30.0))}


@pytest.mark.parametrize("name", sorted(PROJECT_MODELS))
def test_project_model_scored_by_transformers(name, tmp_path, tok_path):
  spec = make_project_model(tmp_path / "cache", tok_path, *PROJECT_MODELS[name])
  lm = loader.load(spec, trainable="attn", param_dtype="float32", compute="float32")
  out = tmp_path / "hf"
  hf_export.export_folder(out, lm.params, lm.cfg, spec.tokenizer)
  compare(lm, *_hf_load(out))
  # project -> HF -> project: the same tree, bit for bit.
  again = checkpoint.load_params(hf.import_folder(out, tmp_path / "cache"),
                                 model_lib.param_shapes(lm.cfg), lambda _: None)
  before = checkpoint.load_params(spec.weights, model_lib.param_shapes(lm.cfg), lambda _: None)
  b, a = flatten(before), flatten(again)
  assert sorted(a) == sorted(b)
  for k in b:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.mark.script
def test_export_script_then_validate_from_the_folder(tmp_project):
  """09-export_full --format hf, then 04-validate --model DIR: the same Result blocks as the
  checkpoint itself (import and export are exact in f32)."""
  out = tmp_project.root / "exports" / "tiny-hf"
  run_script("09-export_full.py", "-m", "cache/tiny.npz", "--format", "hf", "-o", out,
             project=tmp_project)
  assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
          "preprocessor_config.json"} <= set(os.listdir(out))
  valid = "dataset/set1/valid.jsonl"
  want = run_script("04-validate.py", "--model", "tiny", valid, project=tmp_project).stdout
  got = run_script("04-validate.py", "--model", out, valid, project=tmp_project).stdout
  assert got == want and "Result:" in got
  again = run_script("09-export_full.py", "-m", "cache/tiny.npz", "--format", "hf", "-o", out,
                     project=tmp_project, check=False)
  assert again.returncode == 2 and "already exists" in again.stderr


# --- Config and shapes ------------------------------------------------------------------

def test_defaults_are_transformers_defaults():
  from transformers import Gemma2Config, GemmaConfig, SiglipVisionConfig
  theirs = SiglipVisionConfig().to_dict()
  assert {k: theirs[k] for k in hf.VISION_DEFAULTS} == hf.VISION_DEFAULTS
  for family, cls in (("gemma", GemmaConfig), ("gemma2", Gemma2Config)):
    theirs = cls().to_dict()
    assert {k: theirs[k] for k in hf.TEXT_DEFAULTS[family]} == hf.TEXT_DEFAULTS[family]


@pytest.mark.parametrize("preset", [p for p in config_lib.PRESETS if not p.startswith("tiny")])
def test_full_size_presets_match_transformers_by_shape(preset):
  """Every preset's tensors, shaped as transformers builds them (on the meta device: nothing
  allocated), and the config read back unchanged."""
  from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration
  cfg = config_lib.preset(preset)
  raw = hf.config_to_hf(cfg, 257152, dict(bos=2, eos=1, pad=0))
  assert hf.config_from_hf(raw, preset) == cfg
  with torch.device("meta"):
    model = PaliGemmaForConditionalGeneration(PaliGemmaConfig(**raw))
  theirs = {hf.canonical(k): tuple(v.shape) for k, v in model.state_dict().items()}
  theirs.pop("lm_head.weight")
  shapes = flatten(model_lib.param_shapes(cfg))
  ours = {}
  for canon, slot in hf.rules(cfg).items():
    leaf = shapes[slot.name]
    part = jax.ShapeDtypeStruct(leaf.shape[len(slot.index):], leaf.dtype)
    ours[canon] = tuple(jax.eval_shape(slot.to_hf, part).shape)
  assert ours == theirs


def test_sparse_hub_config_uses_class_defaults():
  """A hub config.json leaves most fields to the classes' defaults."""
  raw = {"model_type": "paligemma", "projection_dim": 2048,
         "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "model_type": "gemma",
                         "num_attention_heads": 8, "num_hidden_layers": 18,
                         "num_key_value_heads": 1, "vocab_size": 257216},
         "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "patch_size": 14,
                           "num_attention_heads": 16, "num_hidden_layers": 27}}
  cfg = hf.config_from_hf(raw, "x")
  want = config_lib.preset("paligemma-3b-pt-224")
  assert cfg == want.__class__(want.image_size, want.family, want.img,
                               want.llm.__class__(**{**want.llm.__dict__, "vocab_size": 257216}))


@pytest.mark.parametrize("change, needle", [
    (lambda r: r.update(model_type="llava"), "not a PaliGemma config"),
    (lambda r: r["text_config"].update(model_type="llama"), "neither gemma nor gemma2"),
    (lambda r: r["text_config"].update(hidden_activation="relu"), "activation"),
    (lambda r: r["text_config"].update(rope_parameters={"rope_theta": 1e6}), "RoPE base"),
    (lambda r: r["text_config"].update(query_pre_attn_scalar=3), "query_pre_attn_scalar 3"),
    (lambda r: r["vision_config"].update(image_size=50), "not a multiple of patch_size"),
])
def test_configs_it_cannot_run_are_refused(change, needle):
  raw = hf.config_to_hf(config_lib.preset("tiny-gemma2"), 1024, dict(bos=2, eos=1, pad=0))
  change(raw)
  with pytest.raises(UserError, match=needle):
    hf.config_from_hf(raw, "config.json")


# --- Bad folders ----------------------------------------------------------------------

@pytest.fixture
def small_folder(tmp_path, tok_path):
  return make_hf_model(tmp_path / "m", "pg1-mqa", tok_path)


def _rewrite(folder: Path, edit) -> None:
  from safetensors.numpy import save_file
  path = folder / "model.safetensors"
  with safe_open(os.fspath(path), framework="np") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  edit(tensors)
  save_file(tensors, os.fspath(path), metadata={"format": "pt"})


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.pop("language_model.model.norm.weight"), "1 tensor(s) missing, e.g. text.norm"),
    (lambda t: t.update(extra=np.zeros(2, np.float32)), "unexpected tensor extra"),
    (lambda t: t.update({"multi_modal_projector.linear.bias": np.zeros(3, np.float32)}),
     "multi_modal_projector.linear.bias has shape (3,)"),
    (lambda t: t.update({"language_model.lm_head.weight":
                         t["language_model.model.embed_tokens.weight"] + 1}), "ties them"),
])
def test_bad_tensors_are_one_line_errors(small_folder, tmp_path, edit, needle):
  _rewrite(small_folder, edit)
  with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
    hf.import_folder(small_folder, tmp_path / "cache")
  assert not list((tmp_path / "cache").rglob("*.npz"))  # Nothing half-written.


def test_tied_lm_head_is_accepted(small_folder, tmp_path):
  _rewrite(small_folder, lambda t: t.update({"language_model.lm_head.weight":
                                             t["language_model.model.embed_tokens.weight"]}))
  assert os.path.isfile(hf.import_folder(small_folder, tmp_path))


def test_unreadable_shard_and_export_over_files(small_folder, tmp_path):
  (small_folder / "model.safetensors").write_bytes(b"garbage")
  with pytest.raises(UserError, match="not a readable safetensors file"):
    hf.import_folder(small_folder, tmp_path)
  with pytest.raises(UserError, match="already exists"):
    hf_export.check_export_folder(small_folder)


@pytest.mark.script
def test_download_from_the_hub_needs_a_token(tmp_project, tmp_path):
  proc = run_script("01-download_models.py", "--source", "hf", "--model", "paligemma2-3b-pt-224",
                    project=tmp_project, check=False,
                    env={"HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "", "HF_HOME": str(tmp_path)})
  assert_one_line_error(proc, "huggingface.co/google/paligemma2-3b-pt-224: no Hugging Face "
                        "token: accept the licence", "then set HF_TOKEN")


@pytest.mark.script
def test_lora_delta_over_an_imported_checkpoint_exports_merged(tmp_path, tok_path):
  """HF checkpoint -> --model DIR base -> LoRA delta over it -> 09-export_full --format hf:
  transformers scores the merged export as the project scores the delta, and the export keeps
  the imported checkpoint's own config (Gemma 2's sliding/global layer layout)."""
  from palijudge.files import Project
  project = Project.at(tmp_path / "project")
  source = make_hf_model(tmp_path / "src", "pg2-gqa", tok_path)
  base = hf.import_folder(source, project.cache)
  cfg = checkpoint.read_config(base)
  params = checkpoint.load_params(base, model_lib.param_shapes(cfg), lambda _: np.float32)
  params = flatten(lora.add_adapters(params, rank=2, seed=0))
  rng = np.random.default_rng(1)
  params.update({k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in params.items()
                 if k.startswith(lora.PREFIX) and k.endswith("/b")})  # B = 0 would be a no-op.
  delta = tmp_path / "judge.npz"
  checkpoint.save_delta(delta, unflatten(params), lambda k: k.startswith(lora.PREFIX), cfg, base,
                        {"train_config": {"lora_rank": 2, "lora_alpha": 8.0},
                         "tokenizer": os.fspath(source / "tokenizer.model")})
  out = tmp_path / "judge-hf"
  run_script("09-export_full.py", "-m", delta, "--format", "hf", "-o", out, project=project)
  lm = loader.load(loader.resolve(str(delta), cache_dir=str(project.cache)), trainable="lora",
                   param_dtype="float32", compute="float32")
  assert lora.rank_of(lm.params) == 2
  compare(lm, *_hf_load(out))
  theirs = json.loads((out / "config.json").read_text())["text_config"]
  assert theirs["layer_types"] == ["sliding_attention", "full_attention"]


def test_a_folder_without_config_is_a_one_line_error(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match=r"empty/config.json: not found"):
    loader.resolve(str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))


def test_bfloat16_checkpoint_round_trips_in_bfloat16(tmp_path, tok_path):
  """The hub's PaliGemma 2 files are bfloat16: imported as stored (never widened), exported back
  bit for bit."""
  from transformers import PaliGemmaForConditionalGeneration
  f32 = make_hf_model(tmp_path / "f32", "pg2-gqa", tok_path)
  model = PaliGemmaForConditionalGeneration.from_pretrained(f32, dtype=torch.bfloat16)
  model.save_pretrained(tmp_path / "bf16")
  shutil.copyfile(f32 / "tokenizer.model", tmp_path / "bf16" / "tokenizer.model")
  npz = hf.import_folder(tmp_path / "bf16", tmp_path / "cache")
  cfg = checkpoint.read_config(npz)
  params = checkpoint.load_params(npz, model_lib.param_shapes(cfg), lambda _: None)
  assert {str(a.dtype) for a in flatten(params).values()} == {"bfloat16"}
  hf_export.export_folder(tmp_path / "out", params, cfg, f32 / "tokenizer.model",
                          checkpoint.read_meta(npz))
  a, b = _hf_tensors(tmp_path / "bf16"), _hf_tensors(tmp_path / "out")
  assert sorted(a) == sorted(b)
  for k in a:
    assert str(a[k].dtype) == str(b[k].dtype) == "bfloat16" and np.array_equal(
        a[k].view(np.uint16), b[k].view(np.uint16)), k
