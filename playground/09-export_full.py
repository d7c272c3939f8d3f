#!/usr/bin/env python3
"""Export a complete, big_vision-loadable .npz from any checkpoint (a delta included).

  ./09-export_full.py -m checkpoints/trained-set1.npz -o checkpoints/trained-set1.full.npz
  ./09-export_full.py -m checkpoints/trained-set1.npz --format hf -o exports/trained-set1-hf
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import resolve
from palijudge.options import group, option


@dataclasses.dataclass(frozen=True)
class Config:
  checkpoint: str = option(None, "checkpoint to export", short="-m", required=True)
  out: str = option(None, "the complete .npz (or, --format hf, folder)", short="-o",
                    required=True)
  format: str = option("npz", "npz: big_vision's layout; hf: a transformers PaliGemma folder",
                       choices=("npz", "hf"))
  dtype: str = option("keep", "cast every parameter (keep: trained f32, frozen as stored)",
                      choices=("keep", "float16", "bfloat16", "float32"))
  load: configs.LoadConfig = group(configs.LoadConfig, "model")


def main(cfg, project):
  from palijudge import files, hf_export
  r = resolve(cfg, project, [cfg.checkpoint])
  model, inputs = r.models[0], r.inputs()
  if cfg.format == "npz":
    files.check_writable(cfg.out, "export", inputs)
  else:
    hf_export.check_export_folder(cfg.out)
  with files.lock(cfg.out, "export"):
    _export(cfg, r, model)


def _export(cfg, r, model):
  from palijudge import checkpoint, hf_export, quantize
  from palijudge.model import lora
  lm = r.load()
  quantize.check_full_save(lm.quantize, "export")
  meta = dict(checkpoint.read_meta(lm.spec.weights), delta=False, exported_from=model)
  meta.pop("base_sha256", None)
  dtype = None if cfg.dtype == "keep" else cfg.dtype
  params = lora.merge(lm.params, lm.model.lora_alpha)
  if cfg.format == "hf":
    if lm.spec.base:  # A delta over an imported transformers checkpoint keeps its config.
      meta.setdefault("hf", checkpoint.read_meta(lm.spec.base).get("hf"))
    hf_export.export_folder(cfg.out, params, lm.cfg, lm.spec.tokenizer, meta, dtype=dtype)
  else:
    checkpoint.save(cfg.out, params, lm.cfg, meta, dtype=dtype)
  print(f"wrote {cfg.out}")


if __name__ == "__main__":
  cli.run(Config, main)
