#!/usr/bin/env python3
"""Batch inference: one prediction row per example, streamed, resumable.

  ./13-inference.py -l CKPT -d data.tsv -i IMAGE_DIR -b 4 > out.tsv
  ./13-inference.py -l CKPT -d data.tsv -i IMAGE_DIR -b 4 -o out.tsv   # resumable
  ./13-inference.py -l CKPT1,CKPT2,CKPT3 --ensemble mean -d data.tsv -o out.tsv
  ./13-inference.py -l checkpoints/x.probe.npz -d data.tsv -o out.tsv  # the linear probe

Rows: id, image, label, p_yes, pred, prefix (+ answer in decode mode), TSV
with a header or JSONL (by -o's suffix, or --format). With -o, rows go to
OUT.partial as they come and OUT appears only when complete; after an
interruption, the same command continues where it stopped (a partial file
left by another model, data or settings is refused: its first line proves
which wrote it). Several checkpoints (-l repeated or a comma list) judge as
an ensemble, as in 04-validate.py.
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  from palijudge import predictions
  p = cli.parser(__doc__)
  p.add_argument("-d", "--data", required=True, help="dataset (.tsv or .jsonl)")
  cli.add_root_flag(p, "-i", "--images", "--root")
  cli.add_judge_flags(p, ("-l", "-m", "--checkpoint"))
  p.add_argument("-o", "--out", help="prediction file (.tsv/.jsonl); default: stdout")
  p.add_argument("--format", choices=predictions.FORMATS, help="output format (default: by -o)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
  p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
  cli.add_model_flags(p)
  cli.add_eval_flags(p, skip=("pick_threshold", "target", "gallery", "gallery_max", "json",
                              "eval_set"))
  return p


def main(args, project):
  import contextlib
  import sys
  from palijudge import files, infer, predictions
  from palijudge.data import examples
  paths = cli.judge_paths(args, project)
  ecfg = cli.judge_config(args, paths, log=lambda line: print(line, file=sys.stderr))
  fmt = args.format or predictions.format_of(args.out)
  data = project.find(args.data)
  rows = examples.read_examples(data, cli.data_root(args, project, data))
  predictions.check_values(rows, fmt)
  if args.out:
    infer.check_target(args.out, args.overwrite)
    inputs = cli.model_inputs(args, project, paths) + [("-d", data)]
    for path in (args.out, args.out + ".partial"):
      files.check_writable(path, "prediction file", inputs)
  with files.lock(args.out, "prediction file") if args.out else contextlib.nullcontext():
    judge = cli.load_judge(args, project, paths, ecfg)
    settings = infer.InferSettings(
        model=judge.name, data=args.data, n_examples=len(rows), prompt=ecfg.prompt,
        mode=ecfg.mode, threshold=ecfg.decision, gif_frame=ecfg.gif_frame, frames=ecfg.frames,
        combine=ecfg.combine, batch_size=ecfg.eval_batch,
        model_id=judge.identity() if args.out else "", data_id=infer.data_id(rows))
    res = infer.run(judge.lm, rows, args.out, settings, ecfg, fmt=fmt, overwrite=args.overwrite,
                    progress=not args.no_progress, scorer=judge.scorer)
  if res.path:
    print(f"wrote {res.path}: {res.written + res.resumed} rows"
          f"{f' ({res.resumed} resumed)' if res.resumed else ''}")


if __name__ == "__main__":
  cli.run(main, __file__, flags)
