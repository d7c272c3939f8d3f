#!/usr/bin/env python3
"""Download a PaliGemma checkpoint and the tokenizer into cache/.

  ./01-download_models.py                      # paligemma-3b-pt-224 from Kaggle
  ./01-download_models.py --model tiny         # the embedded default, no network
  ./01-download_models.py --source hf --model paligemma2-3b-pt-224   # transformers layout (HF_TOKEN)
"""
import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli


def flags():
  from palijudge import loader
  from palijudge.model import config
  p = cli.parser(__doc__)
  p.add_argument("--model", default=loader.DEFAULT_MODEL,
                 choices=sorted(config.PRESETS), help="what to fetch (tiny*: generated locally)")
  p.add_argument("--source", choices=("kaggle", "hf"), default="kaggle",
                 help="kaggle: the big_vision .npz; hf: the transformers folder (use it as --model DIR)")
  p.add_argument("--repo", help="with --source hf: this owner/name instead of google/<model>")
  p.add_argument("--revision", help="with --source hf: a branch, tag or commit (default: main)")
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
  if args.source == "hf":
    folder = download.download_hf(download.hf_repo(args.repo or args.model), cache, args.revision)
    print(f"checkpoint: {folder} (pass it as --model {folder})")
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
