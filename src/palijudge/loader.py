"""Which model to run: resolve `--model`, `--model-config`, `--tokenizer`, load.

`--model` is a preset name (weights looked up in `cache/`), a checkpoint
path, or a transformers PaliGemma folder (converted once by `hf.import_folder`).
A palijudge checkpoint carries the config that rebuilds its model; a Kaggle
file does not, so its config comes from `--model-config`, or from a
preset named in its file name (`paligemma-3b-pt-224.f16.npz`).

Dtypes: trainable leaves are f32; frozen leaves keep the checkpoint's own
dtype unless `param_dtype` says otherwise (the Kaggle files are f16/bf16, so
nothing is lost and the host never holds an f32 copy of the frozen model).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from palijudge import checkpoint
from palijudge import devices as devices_lib
from palijudge import distributed
from palijudge import files
from palijudge import hf
from palijudge.model import lora as lora
from palijudge.model import config as config_lib
from palijudge.model import paligemma as model_lib
from palijudge.model.features import FeatureCache

from palijudge.errors import UserError, where
from palijudge.data.tokenizer import Tokenizer
from palijudge import params as params_lib
from palijudge import quantize as quantize_lib
from palijudge.configs import DEFAULT_MODEL, LoadConfig  # noqa: F401

CACHE_DIR = "cache"  # Relative to the project root (see files.Project).
# Where `01-download_models.py` puts each preset's files.
_KAGGLE_FILES = {
    "paligemma-3b-pt-224": "paligemma-3b-pt-224.f16.npz",
    "paligemma-3b-pt-448": "paligemma-3b-pt-448.f16.npz",
    "paligemma2-3b-pt-224": "paligemma2-3b-pt-224.b16.npz",
    "paligemma2-3b-pt-448": "paligemma2-3b-pt-448.b16.npz",
    "paligemma2-10b-pt-224": "paligemma2-10b-pt-224.b16.npz",
    "paligemma2-28b-pt-224": "paligemma2-28b-pt-224.b16.npz",
}
REAL_TOKENIZER = "paligemma_tokenizer.model"


def weights_file(preset: str, cache_dir: str = CACHE_DIR) -> str:
  return os.path.join(cache_dir, _KAGGLE_FILES.get(preset, f"{preset}.npz"))


def tokenizer_file(preset: str, cache_dir: str = CACHE_DIR) -> str:
  name = REAL_TOKENIZER if preset in _KAGGLE_FILES else f"{preset}_tokenizer.model"
  return os.path.join(cache_dir, name)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What to load: config, weights file, tokenizer file."""
  cfg: config_lib.ModelConfig
  weights: str
  tokenizer: str
  name: str
  base: str | None = None  # For a delta checkpoint: the full checkpoint under it.
  cache_dir: str | None = None  # The project's cache/ (feature cache), if any.

  @property
  def inputs(self) -> list[tuple[str, str]]:
    """(what, file) of every file loading reads: no output of the command may be one."""
    pairs = (("the model's weights", self.weights), ("the delta's base", self.base),
             ("the tokenizer", self.tokenizer))
    return [(what, path) for what, path in pairs if path]

  @property
  def weights_id(self) -> str:
    """Identifies the weights (for caches): the files' sha256, remembered beside them."""
    return "+".join(files.sha256_remembered(f) for f in (self.base, self.weights) if f)


def _preset_in_name(path: str) -> str | None:
  base = os.path.basename(path)
  names = sorted(config_lib.PRESETS, key=len, reverse=True)
  return next((n for n in names if re.search(rf"(^|[^\w-]){re.escape(n)}([^\w-]|$)", base)), None)


def resolve(model: str | None = None, model_config: str | None = None,
            tokenizer: str | None = None, cache_dir: str = CACHE_DIR,
            base: str | None = None) -> ModelSpec:
  model = model or DEFAULT_MODEL
  if os.path.isdir(model):  # A transformers checkpoint folder: converted once, cached in cache/hf/.
    model = hf.import_folder(model, cache_dir)
  is_file = model.endswith(".npz") or os.sep in model or os.path.exists(model)
  if not is_file:
    cfg = (config_lib.from_json_file(model_config) if model_config
           else config_lib.preset(model))
    weights = weights_file(model, cache_dir)
    tok = tokenizer or tokenizer_file(model, cache_dir)
    if not os.path.exists(weights):
      raise UserError(f"{where(weights)}: weights for {model} not found; run "
                      f"`python playground/01-download_models.py --model {model}` first")
    return ModelSpec(cfg, weights, tok, model, cache_dir=cache_dir)
  cfg = checkpoint.read_config(model)
  preset = _preset_in_name(model)
  if model_config:
    cfg = config_lib.from_json_file(model_config)
  elif cfg is None and preset:
    cfg = config_lib.preset(preset)
  if cfg is None:
    raise UserError(f"{where(model)}: checkpoint carries no model config; pass "
                    f"--model-config FILE")
  meta = checkpoint.read_meta(model)
  tok = tokenizer or meta.get("tokenizer") or tokenizer_file(preset or "", cache_dir)
  if meta.get("delta"):
    base = base or checkpoint.recorded_base(model, cache_dir)
    checkpoint.verify_base(model, base)
  return ModelSpec(cfg, model, tok, os.path.basename(model), base if meta.get("delta") else None,
                   cache_dir)


def compute_dtype(name: str = "auto"):
  if name == "auto":
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  return jnp.dtype(name)


@dataclasses.dataclass
class LoadedModel:
  spec: ModelSpec
  model: model_lib.PaliGemma
  params: dict[str, Any]
  tok: Tokenizer
  quantize: dict | None = None  # How the frozen matrices were quantized (quantize.describe).

  @property
  def cfg(self) -> config_lib.ModelConfig:
    return self.spec.cfg

  @property
  def weights_id(self) -> str:
    """The weights as loaded: the files' sha256 and the quantization, if any (for caches)."""
    return self.spec.weights_id + quantize_lib.id_suffix(self.quantize)

  @property
  def yes_no_ids(self) -> tuple[int, int]:
    return (self.tok.yes_id, self.tok.no_id)

  @functools.cached_property  # Read per evaluated batch; `params` is replaced, never set.
  def mesh(self) -> jax.sharding.Mesh | None:
    """The devices the parameters lie on (see `params` shardings)."""
    return params_lib.mesh_of(self.params)


def feature_cache(lm: LoadedModel, trainable: str, gif_frame: str) -> FeatureCache | None:
  """A cache of image tokens, or None when training changes the encoder."""
  return None if params_lib.trains_encoder(trainable) else encoder_cache(lm, gif_frame)


def encoder_cache(lm: LoadedModel, gif_frame: str) -> FeatureCache:
  """The cache of `lm`'s encoder as loaded (on disk under the project's cache/features/)."""
  disk = os.path.join(lm.spec.cache_dir, "features") if lm.spec.cache_dir else None
  # Each process embeds its own images, on its own devices (its view of the encoder).
  return FeatureCache(lm.model, distributed.local(lm.params["img"]), lm.weights_id,
                      gif_frame, disk)


def enable_compile_cache(cache_dir: str | os.PathLike) -> None:
  """Persistent XLA compilation cache under `cache_dir`, so a rerun skips compiling.

  Called once by the scripts' entry point (`cli.run`), never on import or load.
  """
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(cache_dir,
                                                                             "jax-compile")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def need_bytes(cfg: config_lib.ModelConfig, trainable: str = "attn", param_dtype: str = "auto",
               optimizer: str = "sgd") -> int:
  """What training `cfg` asks of one device (rough; see devices.training_bytes).

  Frozen leaves count at 2 bytes (the Kaggle files' half precision) unless
  `param_dtype` says otherwise; trainable ones at 4.
  """
  pattern = params_lib.trainable_pattern(trainable)
  sizes = {k: int(np.prod(v.shape)) for k, v in params_lib.flatten(model_lib.param_shapes(cfg)).items()}
  train = sum(n for k, n in sizes.items() if pattern.search(k))
  width = 2 if param_dtype == "auto" else np.dtype(jnp.dtype(param_dtype)).itemsize
  return devices_lib.training_bytes((sum(sizes.values()) - train) * width, train * 4, optimizer)


def placement(cfg: config_lib.ModelConfig, policy: str = "auto", trainable: str = "attn",
              param_dtype: str = "auto", devices=None) -> jax.sharding.Mesh:
  """The mesh `cfg`'s parameters are loaded into (`--mesh`; this process's devices by default)."""
  return devices_lib.placement(policy, need_bytes(cfg, trainable, param_dtype), devices)


def load(spec: ModelSpec, trainable: str = "attn", param_dtype: str = "auto",
         compute: str = "auto", remat: str = "none", bases: dict | None = None,
         mesh: jax.sharding.Mesh | None = None, quantize: str | None = None) -> LoadedModel:
  """The model `spec` names, every leaf read into its place on `mesh` (default: `placement`).

  Each array goes from host memory straight into its sharding (under FSDP
  each device receives only its slice; nothing is ever whole on one device).
  `bases` ({key: params}, filled as it goes) lets several deltas over one
  base (an ensemble) share the base's arrays instead of loading it once each.
  `quantize` (`--quantize`): the frozen matrices of recipe `trainable` are
  quantized leaf by leaf as they are read (before placement); a delta
  checkpoint loads as it records (see `quantize.for_checkpoint`).
  """
  for what, path in spec.inputs:
    files.note_input(path, what)
  tok = Tokenizer.load(spec.tokenizer)
  if tok.vocab_size > spec.cfg.llm.vocab_size:
    raise UserError(f"{where(spec.tokenizer)}: tokenizer has {tok.vocab_size} tokens but the "
                    f"model only {spec.cfg.llm.vocab_size}")
  shapes = model_lib.param_shapes(spec.cfg)
  quant = _quantization(spec, shapes, trainable, quantize)
  # A quantized checkpoint loads as it was trained, whatever `trainable` the caller names.
  rule = params_lib.dtype_rule(quant["trainable"] if quant else trainable, param_dtype)
  mesh = mesh if mesh is not None else placement(spec.cfg, "auto", trainable, param_dtype)
  # Each array (a quantized leaf's values and scales alike) straight into its sharding.
  place = lambda a: params_lib.put(a, params_lib.leaf_sharding(mesh, a.shape))
  put = quantize_lib.loading_put(quant, lambda _, a: jax.tree.map(place, a))
  if spec.base:  # A delta: the base first, then the leaves the run trained.
    # The base as this delta loads it: the quantized leaves follow its recorded recipe.
    key = (os.path.abspath(spec.base), quant and (quant["mode"], quant["trainable"]))
    shared = bases if bases is not None else {}
    if key not in shared:
      shared[key] = checkpoint.load_params(spec.base, shapes, dtype_for=rule, put=put)
    params = shared[key]
    names = set(checkpoint.param_names(spec.weights))
    if any(n.startswith(lora.PREFIX) for n in names):  # An adapter-only delta.
      rank = checkpoint.read_meta(spec.weights)["train_config"]["lora_rank"]
      shapes = lora.with_adapter_shapes(shapes, rank)
    delta = checkpoint.load_params(spec.weights, shapes, dtype_for=rule, put=put,
                                   subset=names.__contains__)
    params = params_lib.merge(params, delta)
  else:
    params = checkpoint.load_params(spec.weights, shapes, dtype_for=rule, put=put)
  alpha = _lora_alpha(spec.weights) if lora.rank_of(params) is not None else lora.DEFAULT_ALPHA
  model = model_lib.build(spec.cfg, compute_dtype(compute), remat, alpha)
  return LoadedModel(spec, model, params, tok, quant)


def _quantization(spec: ModelSpec, shapes, trainable: str, mode: str | None) -> dict | None:
  """`--quantize` resolved against what the checkpoint records; refuses one that quantizes nothing."""
  meta = checkpoint.read_meta(spec.weights) if spec.weights.endswith(".npz") else {}
  quant = quantize_lib.for_checkpoint(meta, mode, trainable, where(spec.weights))
  if quant and not quantize_lib.frozen_matrices(params_lib.flatten(shapes), quant["trainable"]):
    raise UserError(f"--quantize {quant['mode']}: --trainable {quant['trainable']} trains every "
                    f"matrix, so none is frozen to quantize")
  return quant


def _lora_alpha(path: str) -> float:
  """The adapter scale a LoRA checkpoint was trained with (16 for files older than the flag)."""
  recipe = checkpoint.read_meta(path).get("train_config")
  alpha = recipe.get("lora_alpha") if isinstance(recipe, dict) else None
  return float(alpha) if isinstance(alpha, (int, float)) and alpha > 0 else lora.DEFAULT_ALPHA


def load_model(lcfg: LoadConfig, cache_dir: str = CACHE_DIR, trainable: str = "attn",
               model: str | None = None, devices=None, policy: str | None = None,
               bases: dict | None = None) -> LoadedModel:
  """resolve + load from the --model flags (`model` overrides --model, e.g. -m CKPT).

  `devices`: where the parameters go (default: this process's devices; a
  training run passes every process's); `policy` overrides `--mesh`; `bases` as `load`'s.
  """
  spec = resolve(model or lcfg.model, lcfg.model_config, lcfg.tokenizer, cache_dir, lcfg.base)
  mesh = placement(spec.cfg, policy or lcfg.mesh, trainable, lcfg.param_dtype, devices)
  return load(spec, trainable=trainable, param_dtype=lcfg.param_dtype,
              compute=lcfg.compute_dtype, mesh=mesh, bases=bases, quantize=lcfg.quantize)


def write_random_model(preset: str, cache_dir: str = CACHE_DIR, seed: int = 0) -> ModelSpec:
  """A seeded random model + offline-trained tokenizer: the embedded default.

  Only for small presets (the tiny ones): a 3B model would not fit the point.
  """
  from palijudge.data import synthetic as synthetic
  cfg = config_lib.preset(preset)
  n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(model_lib.param_shapes(cfg)))
  if n_params > 50_000_000:
    raise UserError(f"{preset} has {n_params:,} parameters; random weights are only written "
                    f"for the tiny presets")
  tok_path = tokenizer_file(preset, cache_dir)
  synthetic.write_tiny_tokenizer(tok_path, cfg.llm.vocab_size)
  weights = weights_file(preset, cache_dir)
  params = model_lib.init_params(cfg, seed)
  checkpoint.save(weights, params, cfg, {"tokenizer": tok_path, "init": f"random, seed {seed}"})
  return ModelSpec(cfg, weights, tok_path, preset)
