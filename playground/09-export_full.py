#!/usr/bin/env python3
"""Export a complete, big_vision-loadable .npz from any checkpoint (a delta included).

  ./09-export_full.py -m checkpoints/trained-set1.npz -o checkpoints/trained-set1.full.npz
  ./09-export_full.py -m checkpoints/trained-set1.npz --format hf -o exports/trained-set1-hf
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  p = cli.parser(__doc__)
  p.add_argument("-m", "--checkpoint", required=True, help="checkpoint to export")
  p.add_argument("-o", "--out", required=True, help="the complete .npz (or, --format hf, folder)")
  p.add_argument("--format", choices=("npz", "hf"), default="npz",
                 help="npz: big_vision's layout; hf: a transformers PaliGemma folder")
  p.add_argument("--dtype", choices=("keep", "float16", "bfloat16", "float32"), default="keep",
                 help="cast every parameter (keep: trained f32, frozen as stored)")
  cli.add_model_flags(p)
  return p


def main(args, project):
  from palijudge import files, hf_export
  model = project.find(args.checkpoint)
  inputs = cli.model_inputs(args, project, [model])
  if args.format == "npz":
    files.check_writable(args.out, "export", inputs)
  else:
    hf_export.check_export_folder(args.out)
  with files.lock(args.out, "export"):
    _export(args, project, model)


def _export(args, project, model):
  from palijudge import checkpoint, hf_export, quantize
  from palijudge.model import lora
  lm = cli.load_model(args, project, model=model)
  quantize.check_full_save(lm.quantize, "export")
  meta = dict(checkpoint.read_meta(lm.spec.weights), delta=False, exported_from=model)
  meta.pop("base_sha256", None)
  dtype = None if args.dtype == "keep" else args.dtype
  params = lora.merge(lm.params, lm.model.lora_alpha)
  if args.format == "hf":
    if lm.spec.base:  # A delta over an imported transformers checkpoint keeps its config.
      meta.setdefault("hf", checkpoint.read_meta(lm.spec.base).get("hf"))
    hf_export.export_folder(args.out, params, lm.cfg, lm.spec.tokenizer, meta, dtype=dtype)
  else:
    checkpoint.save(args.out, params, lm.cfg, meta, dtype=dtype)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  cli.run(main, __file__, flags)
