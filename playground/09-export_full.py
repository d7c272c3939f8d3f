#!/usr/bin/env python3
"""Export a complete, big_vision-loadable .npz from any checkpoint (a delta included).

  ./09-export_full.py -m checkpoints/trained-set1.npz -o checkpoints/trained-set1.full.npz
"""
from palijudge import cli


def main():
  from palijudge import checkpoint
  p = cli.parser(__doc__)
  p.add_argument("-m", "--checkpoint", required=True, help="checkpoint to export")
  p.add_argument("-o", "--out", required=True, help="the complete .npz to write")
  p.add_argument("--dtype", choices=("keep", "float16", "bfloat16", "float32"), default="keep",
                 help="cast every parameter (keep: trained f32, frozen as stored)")
  cli.add_model_args(p)
  args = p.parse_args()
  lm = cli.load_model(args, model=args.checkpoint)
  meta = dict(checkpoint.read_meta(args.checkpoint), delta=False, exported_from=args.checkpoint)
  meta.pop("base_sha256", None)
  dtype = None if args.dtype == "keep" else __import__("jax.numpy").numpy.dtype(args.dtype)
  from palijudge.model import lora as lora
  checkpoint.save(args.out, lora.merge(lm.params), lm.cfg, meta, dtype=dtype)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  cli.run_main(main)
