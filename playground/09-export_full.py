#!/usr/bin/env python3
"""Export a complete, big_vision-loadable .npz from any checkpoint (a delta included).

  ./09-export_full.py -m checkpoints/trained-set1.npz -o checkpoints/trained-set1.full.npz
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  p = cli.parser(__doc__)
  p.add_argument("-m", "--checkpoint", required=True, help="checkpoint to export")
  p.add_argument("-o", "--out", required=True, help="the complete .npz to write")
  p.add_argument("--dtype", choices=("keep", "float16", "bfloat16", "float32"), default="keep",
                 help="cast every parameter (keep: trained f32, frozen as stored)")
  cli.add_model_flags(p)
  return p


def main(args, project):
  from palijudge import checkpoint, files, quantize
  from palijudge.model import lora
  files.check_writable(args.out, "export")
  model = project.find(args.checkpoint)
  lm = cli.load_model(args, project, model=model)
  quantize.check_full_save(lm.quantize, "export")
  meta = dict(checkpoint.read_meta(model), delta=False, exported_from=model)
  meta.pop("base_sha256", None)
  dtype = None if args.dtype == "keep" else args.dtype
  checkpoint.save(args.out, lora.merge(lm.params, lm.model.lora_alpha), lm.cfg, meta, dtype=dtype)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  cli.run(main, __file__, flags)
