#!/usr/bin/env python3
"""Download a PaliGemma checkpoint and the tokenizer into cache/.

  ./01-download_models.py                      # paligemma-3b-pt-224 from Kaggle
  ./01-download_models.py --model tiny         # the embedded default, no network
  ./01-download_models.py --source hf --model paligemma2-3b-pt-224   # transformers layout (HF_TOKEN)
"""
import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.options import option

from palijudge.model import config as model_config


@dataclasses.dataclass(frozen=True)
class Config:
  model: str = option(configs.DEFAULT_MODEL, "what to fetch (tiny*: generated locally)",
                      choices=sorted(model_config.PRESETS))
  source: str = option("kaggle", "kaggle: the big_vision .npz; hf: the transformers folder "
                       "(use it as --model DIR)", choices=("kaggle", "hf"))
  repo: str | None = option(None, "with --source hf: this owner/name instead of google/<model>")
  revision: str | None = option(None, "with --source hf: a branch, tag or commit (default: "
                                "main)")
  cache: str | None = option(None, "where to put the files (default: cache/)")
  seed: int = option(0, "init seed for the tiny presets")
  tokenizer_file: str | None = option(None, "use this paligemma_tokenizer.model (tried first)")
  any_tokenizer_sha: bool = option(False, "accept a tokenizer whose sha256 differs (its "
                                   "vocabulary is still checked)")


def main(cfg, project):
  from palijudge import loader
  from palijudge.tools import download
  cache = cfg.cache or str(project.cache)
  if cfg.model.startswith("tiny"):
    spec = loader.write_random_model(cfg.model, cache, cfg.seed)
    print(f"wrote {spec.weights} (random, seed {cfg.seed}) and {spec.tokenizer}")
    return
  if cfg.source == "hf":
    folder = download.download_hf(download.hf_repo(cfg.repo or cfg.model), cache, cfg.revision)
    print(f"checkpoint: {folder} (pass it as --model {folder})")
    return
  weights = download.download_model(cfg.model, cache)
  print(f"checkpoint: {weights}")
  folder = download.kaggle_folder(cfg.model)
  extra = {"sha256": None} if cfg.any_tokenizer_sha else {}
  tok = download.download_tokenizer(cache, folder, user_file=cfg.tokenizer_file, log=print,
                                    **extra)
  print(f"tokenizer:  {tok}")


if __name__ == "__main__":
  cli.run(Config, main)
