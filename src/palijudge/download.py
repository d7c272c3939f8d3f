"""Downloads official PaliGemma checkpoints (Kaggle) and the tokenizer.

Needs network access, Kaggle credentials (~/.kaggle/kaggle.json, or
KAGGLE_USERNAME and KAGGLE_KEY) and the model licence accepted on Kaggle.
Files land in `cache_dir` (hard link or symlink into kagglehub's cache when
possible, else a copy); existing files are reused.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from pathlib import Path

import sentencepiece as spm

from palijudge.errors import UserError, where

KAGGLE_MODELS: dict[str, tuple[str, str]] = {
    "paligemma-3b-pt-224": ("google/paligemma/jax/paligemma-3b-pt-224",
                            "paligemma-3b-pt-224.f16.npz"),
    "paligemma-3b-pt-448": ("google/paligemma/jax/paligemma-3b-pt-448",
                            "paligemma-3b-pt-448.f16.npz"),
    "paligemma2-3b-pt-224": ("google/paligemma-2/jax/paligemma2-3b-pt-224",
                             "paligemma2-3b-pt-224.b16.npz"),
    "paligemma2-3b-pt-448": ("google/paligemma-2/jax/paligemma2-3b-pt-448",
                             "paligemma2-3b-pt-448.b16.npz"),
    "paligemma2-10b-pt-224": ("google/paligemma-2/jax/paligemma2-10b-pt-224",
                              "paligemma2-10b-pt-224.b16.npz"),
    "paligemma2-28b-pt-224": ("google/paligemma-2/jax/paligemma2-28b-pt-224",
                              "paligemma2-28b-pt-224.b16.npz"),
}
TOKENIZER_FILE = "paligemma_tokenizer.model"
TOKENIZER_VOCAB = 257152
# Public copy used by big_vision's colabs (no credentials needed).
TOKENIZER_URL = "https://storage.googleapis.com/big_vision/paligemma_tokenizer.model"


def _credentials_file() -> Path:
  folder = os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle"
  return Path(folder) / "kaggle.json"


def check_credentials() -> None:
  """Raises UserError unless Kaggle credentials are configured."""
  if _credentials_file().is_file():
    return
  if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
    return
  if os.environ.get("KAGGLE_API_TOKEN"):
    return
  raise UserError(
      f"no Kaggle credentials: put kaggle.json (from kaggle.com > Settings > "
      f"API > Create New Token) at {_credentials_file()}, or set both "
      f"KAGGLE_USERNAME and KAGGLE_KEY")


def _licence_url(handle: str) -> str:
  return "https://www.kaggle.com/models/" + "/".join(handle.split("/")[:2])


def _status_code(err: BaseException) -> int | None:
  """HTTP status of a kagglehub/requests error, from .response or the text."""
  code = getattr(getattr(err, "response", None), "status_code", None)
  if isinstance(code, int):
    return code
  code = getattr(err, "error_code", None)
  if isinstance(code, int):
    return code
  m = re.search(r"\b(401|403|404)\b", str(err))
  return int(m.group(1)) if m else None


def _download_error(err: Exception, handle: str) -> UserError:
  """Maps a kagglehub exception to a one-line UserError."""
  code = _status_code(err)
  if code in (401, 403):
    return UserError(f"Kaggle refused access (HTTP {code}): accept the "
                     f"PaliGemma licence at {_licence_url(handle)} first")
  if code == 404:
    return UserError(f"Kaggle model {handle} not found (HTTP 404)")
  reason = " ".join(str(err).split()) or type(err).__name__
  return UserError(f"could not download {handle} from Kaggle: {reason}")


def _import_kagglehub():
  try:
    import kagglehub  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("kagglehub is not installed: pip install kagglehub") from None
  return kagglehub


def kaggle_folder(name: str) -> Path:
  """Downloads (or reuses kagglehub's cache of) model `name`; returns its folder."""
  if name not in KAGGLE_MODELS:
    raise UserError(f"unknown model {name!r}; known: {', '.join(KAGGLE_MODELS)}")
  check_credentials()
  kagglehub = _import_kagglehub()
  handle = KAGGLE_MODELS[name][0]
  try:
    return Path(kagglehub.model_download(handle))
  except UserError:
    raise
  except Exception as e:  # kagglehub raises many kinds; all are fatal here.
    raise _download_error(e, handle) from None


def _find_npz(folder: Path, filename: str) -> Path:
  if folder.is_file():
    return folder
  exact = folder / filename
  if exact.is_file():
    return exact
  found = sorted(folder.rglob(filename)) or sorted(folder.rglob("*.npz"))
  if not found:
    raise UserError(f"{where(folder)}: no .npz checkpoint in the Kaggle download")
  return found[0]


def _link_or_copy(src: Path, dst: Path) -> None:
  """Places `src` at `dst` atomically: hard link, else symlink, else copy."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
  for make in (lambda: os.link(src, tmp),
               lambda: os.symlink(src.resolve(), tmp),
               lambda: shutil.copyfile(src, tmp)):
    try:
      if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
      make()
      os.replace(tmp, dst)
      return
    except OSError:
      continue
  if tmp.is_symlink() or tmp.exists():
    tmp.unlink()
  raise UserError(f"{where(dst)}: could not link or copy {src} here")


def download_model(name: str, cache_dir: str | os.PathLike = "cache") -> Path:
  """Returns cache_dir/<checkpoint>.npz, downloading it from Kaggle if absent."""
  if name not in KAGGLE_MODELS:
    raise UserError(f"unknown model {name!r}; known: {', '.join(KAGGLE_MODELS)}")
  target = Path(cache_dir) / KAGGLE_MODELS[name][1]
  if target.is_file():
    return target
  src = _find_npz(kaggle_folder(name), KAGGLE_MODELS[name][1])
  _link_or_copy(src, target)
  return target


def tokenizer_vocab(path: Path) -> int | None:
  """Vocabulary size of a sentencepiece file, or None if it does not load."""
  try:
    return spm.SentencePieceProcessor(model_file=os.fspath(path)).vocab_size()
  except (OSError, RuntimeError, ValueError):
    return None


def _verify_tokenizer(path: Path, name: str | None = None) -> None:
  """UserError (naming `name`, default `path`) unless vocab is 257152."""
  vocab = tokenizer_vocab(path)
  name = name or where(path)
  if vocab is None:
    raise UserError(f"{name}: not a valid sentencepiece model")
  if vocab != TOKENIZER_VOCAB:
    raise UserError(f"{name}: tokenizer vocabulary is {vocab}, "
                    f"PaliGemma needs {TOKENIZER_VOCAB}")


def _tokenizer_in(folder: Path) -> Path | None:
  """paligemma_tokenizer.model in `folder`, else any *.model of the right size."""
  named = sorted(folder.rglob(TOKENIZER_FILE))
  if named:
    return named[0]
  for p in sorted(folder.rglob("*.model")):
    if tokenizer_vocab(p) == TOKENIZER_VOCAB:
      return p
  return None


def _fetch_url(url: str, dst: Path) -> None:
  """Downloads `url` to `dst` (not atomic; the caller verifies and renames)."""
  try:
    with urllib.request.urlopen(url, timeout=60) as r, open(dst, "wb") as f:
      shutil.copyfileobj(r, f)
  except OSError as e:
    raise UserError(f"could not download the tokenizer from {url}: "
                    f"{getattr(e, 'reason', e)}") from None


def download_tokenizer(cache_dir: str | os.PathLike = "cache",
                       model_dir: str | os.PathLike | None = None) -> Path:
  """Returns a verified cache_dir/paligemma_tokenizer.model (vocab 257152).

  Taken from `model_dir` (a Kaggle model folder) when it holds one, else
  downloaded from big_vision's public bucket.
  """
  target = Path(cache_dir) / TOKENIZER_FILE
  if target.is_file():
    _verify_tokenizer(target)
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
  try:
    src = _tokenizer_in(Path(model_dir)) if model_dir is not None else None
    if src is not None:
      _verify_tokenizer(src)
      shutil.copyfile(src, tmp)
    else:
      _fetch_url(TOKENIZER_URL, tmp)
      _verify_tokenizer(tmp, TOKENIZER_URL)
    os.replace(tmp, target)
  finally:
    if tmp.exists():
      tmp.unlink()
  return target
