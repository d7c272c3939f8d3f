#!/usr/bin/env python3
"""Batch inference: one prediction row per example, streamed, resumable.

  ./13-inference.py -l CKPT -d data.tsv -i IMAGE_DIR -b 4 > out.tsv
  ./13-inference.py -l CKPT -d data.tsv -i IMAGE_DIR -b 4 -o out.tsv   # resumable

Rows: id, image, label, p_yes, pred, prefix (+ answer in decode mode), TSV
with a header or JSONL (by -o's suffix, or --format). With -o, rows go to
OUT.partial as they come and OUT appears only when complete; after an
interruption, the same command continues where it stopped.
"""
from palijudge import cli


def main():
  from palijudge import evaluate, infer
  from palijudge.data import examples as data
  from palijudge.data import images as images
  from palijudge import predictions as predfile
  p = cli.parser(__doc__)
  p.add_argument("-d", "--data", required=True, help="dataset (.tsv or .jsonl)")
  p.add_argument("-i", "--images", dest="root", default=None,
                 help="image folder relative paths resolve against (default: the data's folder)")
  p.add_argument("-l", "-m", "--checkpoint", help="checkpoint .npz (default: the base --model)")
  p.add_argument("-o", "--out", help="prediction file (.tsv/.jsonl); default: stdout")
  p.add_argument("--format", choices=predfile.FORMATS, help="output format (default: by -o)")
  p.add_argument("-b", "--batch", dest="eval_batch", type=int, default=8)
  p.add_argument("--mode", default="score", choices=evaluate.MODES)
  p.add_argument("--threshold", type=float, help="default: the checkpoint's, else 0.5")
  p.add_argument("--gif-frame", default="first", choices=images.GIF_POLICIES)
  p.add_argument("--gif-frames", type=int, metavar="K")
  p.add_argument("--gif-combine", choices=images.GIF_COMBINE)
  p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
  p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
  cli.add_model_args(p)
  p.set_defaults(json=False)
  args = p.parse_args()
  opts = cli.eval_options(args, cli.stored_threshold(args.checkpoint or args.model))
  honest = cli.report_options(args)
  fmt = args.format or predfile.format_of(args.out)
  examples = data.read_examples(args.data, args.root)
  lm = cli.load_model(args, model=args.checkpoint)
  settings = infer.InferSettings(
      model=lm.spec.weights, data=args.data, n_examples=len(examples), prompt=opts.prompt,
      mode=opts.mode, threshold=opts.threshold, gif_frame=opts.gif_frame,
      frames=honest.frames, combine=honest.combine, batch_size=opts.batch_size)
  res = infer.run(lm, examples, args.out, settings, fmt=fmt, overwrite=args.overwrite,
                  progress=not args.no_progress)
  if res.path:
    print(f"wrote {res.path}: {res.written + res.resumed} rows"
          f"{f' ({res.resumed} resumed)' if res.resumed else ''}")


if __name__ == "__main__":
  cli.run_main(main)
