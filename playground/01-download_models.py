#!/usr/bin/env python3
"""Download a PaliGemma checkpoint and the tokenizer into cache/.

  ./01-download_models.py                      # paligemma-3b-pt-224 from Kaggle
  ./01-download_models.py --model tiny         # the embedded default, no network
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  from palijudge import loader
  from palijudge.model import config
  p = cli.parser(__doc__)
  p.add_argument("--model", default=loader.DEFAULT_MODEL,
                 choices=sorted(config.PRESETS), help="what to fetch (tiny*: generated locally)")
  p.add_argument("--cache", default=None, help="where to put the files (default: cache/)")
  p.add_argument("--seed", type=int, default=0, help="init seed for the tiny presets")
  p.add_argument("--tokenizer-file", help="use this paligemma_tokenizer.model (tried first)")
  p.add_argument("--any-tokenizer-sha", action="store_true",
                 help="accept a tokenizer whose sha256 differs (its vocabulary is still checked)")
  return p


def main(args, project):
  from palijudge import loader
  from palijudge.tools import download
  cache = args.cache or str(project.cache)
  if args.model.startswith("tiny"):
    spec = loader.write_random_model(args.model, cache, args.seed)
    print(f"wrote {spec.weights} (random, seed {args.seed}) and {spec.tokenizer}")
    return
  weights = download.download_model(args.model, cache)
  print(f"checkpoint: {weights}")
  folder = download.kaggle_folder(args.model)
  extra = {"sha256": None} if args.any_tokenizer_sha else {}
  tok = download.download_tokenizer(cache, folder, user_file=args.tokenizer_file, log=print,
                                    **extra)
  print(f"tokenizer:  {tok}")


if __name__ == "__main__":
  cli.run(main, __file__, flags)
