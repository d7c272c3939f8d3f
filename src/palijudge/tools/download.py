"""Downloads official PaliGemma checkpoints (Kaggle) and the tokenizer.

Checkpoints need Kaggle credentials (~/.kaggle/kaggle.json, or KAGGLE_USERNAME
and KAGGLE_KEY) and the model licence accepted on Kaggle; they land in
`cache_dir` (a link into kagglehub's cache, else a copy). The tokenizer comes
from the first source that works: a file the user names, the Kaggle model
files, big_vision's public bucket (resumable: HTTP Range into a .part file),
the Hugging Face hub (HF_TOKEN); each is checked by sha256 and vocab size.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import sentencepiece as spm

from palijudge import progress as progress_lib
from palijudge.errors import UserError, where
from palijudge import files

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
# sha256 of that file (4,264,023 bytes); None skips the check (vocab size is still checked).
TOKENIZER_SHA256: str | None = "8986bb4f423f07f8c7f70d0dbe3526fb2316056c17bae71b1ea975e77a168fc6"
HF_REPO, HF_FILE = "google/paligemma-3b-pt-224", "tokenizer.model"
_KNOWN = "known"  # sha256 argument default: TOKENIZER_SHA256 as set when called


def _credentials_file() -> Path:
  folder = os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle"
  return Path(folder) / "kaggle.json"


def check_credentials() -> None:
  """Raises UserError unless Kaggle credentials are configured."""
  env = os.environ.get
  if _credentials_file().is_file() or (env("KAGGLE_USERNAME") and env("KAGGLE_KEY")) or env(
      "KAGGLE_API_TOKEN"):
    return
  raise UserError(
      f"no Kaggle credentials: put kaggle.json (from kaggle.com > Settings > "
      f"API > Create New Token) at {_credentials_file()}, or set both "
      f"KAGGLE_USERNAME and KAGGLE_KEY")


def _licence_url(handle: str) -> str:
  return "https://www.kaggle.com/models/" + "/".join(handle.split("/")[:2])


def _status_code(err: BaseException) -> int | None:
  """HTTP status of a kagglehub/requests error, from .response or the text."""
  for code in (getattr(getattr(err, "response", None), "status_code", None),
               getattr(err, "error_code", None)):
    if isinstance(code, int):
      return code
  m = re.search(r"\b(401|403|404)\b", str(err))
  return int(m.group(1)) if m else None


_NETWORK = (("name resolution", "cannot resolve the server's name (DNS)"),
            ("name or service not known", "cannot resolve the server's name (DNS)"),
            ("nodename nor servname", "cannot resolve the server's name (DNS)"),
            ("getaddrinfo", "cannot resolve the server's name (DNS)"),
            ("timed out", "the connection timed out"), ("timeout", "the connection timed out"),
            ("connection refused", "the connection was refused"),
            ("network is unreachable", "the network is unreachable"),
            ("proxy", "the proxy failed"), ("ssl", "the TLS (SSL) handshake failed"),
            ("max retries exceeded", "the server could not be reached"),
            ("connection reset", "the connection was reset"),
            ("remote end closed", "the connection was closed"))
_NETWORK_TYPES = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutError",
                  "MaxRetryError", "NewConnectionError", "NameResolutionError", "ProxyError",
                  "SSLError", "gaierror", "URLError", "RemoteDisconnected")


def network_problem(err: BaseException) -> str | None:
  """What went wrong, in words, when `err` (or what caused it) is a network failure; else None.

  requests/urllib3 wrap the cause several levels deep, with a message such as
  "HTTPSConnectionPool(host=...): Max retries exceeded ... NameResolutionError(...)".
  """
  chain = list(_causes(err))
  if not any(type(e).__name__ in _NETWORK_TYPES for e in chain):
    return None
  text = " ".join(str(e) for e in chain).lower()
  return next((what for key, what in _NETWORK if key in text), "the connection failed")


def _causes(err: BaseException | None):
  """err, then what caused it (__cause__, __context__, urllib's .reason), each once."""
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    yield err
    reason = getattr(err, "reason", None)
    err = err.__cause__ or err.__context__ or (reason if isinstance(reason, BaseException)
                                               else None)


def network_error(what: str, host: str, problem: str) -> UserError:
  return UserError(f"network error while {what}: {problem}. Check the internet connection, "
                   f"any proxy (HTTPS_PROXY) or firewall, and that {host} is reachable; then run "
                   f"the same command again (finished files are kept)")


def _download_error(err: Exception, handle: str) -> UserError:
  """Maps a kagglehub exception to a one-line UserError."""
  problem = network_problem(err)
  if problem:
    return network_error(f"downloading {handle} from Kaggle", "www.kaggle.com", problem)
  code = _status_code(err)
  if code in (401, 403):
    return UserError(f"Kaggle refused access (HTTP {code}): accept the "
                     f"PaliGemma licence at {_licence_url(handle)} first")
  if code == 404:
    return UserError(f"Kaggle model {handle} not found (HTTP 404)")
  reason = " ".join(str(err).split()) or type(err).__name__
  return UserError(f"could not download {handle} from Kaggle: {reason}")


def kaggle_folder(name: str) -> Path:
  """Downloads (or reuses kagglehub's cache of) model `name`; returns its folder."""
  if name not in KAGGLE_MODELS:
    raise UserError(f"unknown model {name!r}; known: {', '.join(KAGGLE_MODELS)}")
  check_credentials()
  try:
    import kagglehub  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("kagglehub is not installed: pip install kagglehub") from None
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
  if (folder / filename).is_file():
    return folder / filename
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
      tmp.unlink(missing_ok=True)
      make()
      os.replace(tmp, dst)
      return
    except OSError:
      continue
  tmp.unlink(missing_ok=True)
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


def check_tokenizer(path: Path, name: str | None = None, sha256: str | None = _KNOWN) -> str:
  """The file's sha256; UserError unless vocab 257152 and the sha256 expected (None: any)."""
  vocab = tokenizer_vocab(path)
  name = name or where(path)
  if vocab is None:
    raise UserError(f"{name}: not a valid sentencepiece model")
  if vocab != TOKENIZER_VOCAB:
    raise UserError(f"{name}: tokenizer vocabulary is {vocab}, "
                    f"PaliGemma needs {TOKENIZER_VOCAB}")
  digest, expected = files.sha256(path), TOKENIZER_SHA256 if sha256 == _KNOWN else sha256
  if expected and digest != expected:
    raise UserError(f"{name}: sha256 {digest} is not the known tokenizer's {expected}")
  return digest


def _tokenizer_in(folder: Path) -> Path | None:
  """paligemma_tokenizer.model in `folder`, else any *.model of the right size."""
  named = sorted(folder.rglob(TOKENIZER_FILE))
  if named:
    return named[0]
  for p in sorted(folder.rglob("*.model")):
    if tokenizer_vocab(p) == TOKENIZER_VOCAB:
      return p
  return None


def _http_error(url: str, code: int) -> UserError:
  why = {401: "credentials required", 403: "access denied", 404: "not found"}.get(code, "error")
  hint = "; use --tokenizer-file FILE or set HF_TOKEN" if code in (401, 403, 404) else ""
  return UserError(f"{url}: HTTP {code}, {why}{hint}")


def _total(resp, offset: int) -> int | None:
  m = re.search(r"/(\d+)\s*$", resp.headers.get("Content-Range") or "")
  length = resp.headers.get("Content-Length") or ""
  return int(m.group(1)) if m else offset + int(length) if length.isdigit() else None


def fetch_resumable(url: str, dst: Path, progress: bool = True, _retry: bool = True) -> Path:
  """url -> dst.part (complete), resuming a partial dst.part with an HTTP Range request."""
  part = dst.with_name(dst.name + ".part")
  have = part.stat().st_size if part.exists() else 0
  req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
  try:
    resp = urllib.request.urlopen(req, timeout=60)
  except urllib.error.HTTPError as e:
    if e.code == 416 and have and _retry:  # The .part is not a prefix: start over, once.
      part.unlink()
      return fetch_resumable(url, dst, progress, _retry=False)
    raise _http_error(url, e.code) from None
  except (OSError, http.client.HTTPException) as e:
    problem = network_problem(e)
    if problem:
      raise network_error(f"downloading {url}", urllib.parse.urlsplit(url).netloc or url,
                          problem) from None
    raise UserError(f"{url}: {getattr(e, 'reason', None) or e}") from None
  with resp:
    have = have if resp.status == 206 else 0  # A server that ignores Range starts over.
    total = _total(resp, have)
    with open(part, "ab" if have else "wb") as f, progress_lib.bar(
        total, dst.name, "B", initial=have, enabled=progress, unit_scale=True) as bar:
      try:
        for chunk in iter(lambda: resp.read(1 << 16), b""):
          f.write(chunk)
          have += len(chunk)
          bar.update(len(chunk))
      except (OSError, http.client.HTTPException) as e:
        raise UserError(f"{url}: interrupted at {have} bytes ({e}); run again to resume") \
            from None
  if total is not None and have < total:
    raise UserError(f"{url}: interrupted at {have} of {total} bytes; run again to resume")
  return part


def _hub(at: str, token: str | None):
  """(huggingface_hub, token): the module (lazy import) and a token, or a one-line UserError."""
  try:
    import huggingface_hub as hub  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"{at}: pip install huggingface_hub to use it") from None
  token = (token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
           or getattr(hub, "get_token", lambda: None)())
  if not token:
    raise UserError(f"{at}: no Hugging Face token: accept the licence at https://{at}, "
                    f"then set HF_TOKEN (or run `huggingface-cli login`)")
  return hub, token


def _hub_error(err: Exception, at: str, what: str) -> UserError:
  """A huggingface_hub failure (HfHubHTTPError, GatedRepoError, network...) as one line."""
  problem = network_problem(err)
  if problem:
    return network_error(f"downloading {what} from {at}", "huggingface.co", problem)
  code = _status_code(err)
  if code in (401, 403) or "Gated" in type(err).__name__:
    return UserError(f"{at}: access refused (HTTP {code or 403}): accept the licence at "
                     f"https://{at} with the account of your token")
  if code == 404 or "NotFound" in type(err).__name__:
    return UserError(f"{at}: not found (HTTP 404): check the repository and revision")
  return UserError(f"{at}: {' '.join(str(err).split()) or type(err).__name__}")


def _from_hub(token: str | None) -> Path:
  """tokenizer.model of google/paligemma-3b-pt-224 via huggingface_hub."""
  at = f"huggingface.co/{HF_REPO}"
  hub, token = _hub(at, token)
  try:
    return Path(hub.hf_hub_download(HF_REPO, HF_FILE, token=token))
  except Exception as e:  # HfHubHTTPError, GatedRepoError, network errors...
    raise _hub_error(e, at, "the tokenizer") from None


def hf_repo(name: str) -> str:
  """The hub repository of a preset (google/<preset>), or `name` itself when it is owner/repo."""
  if name in KAGGLE_MODELS:
    return f"google/{name}"
  if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
    return name
  raise UserError(f"unknown model {name!r}; give a preset ({', '.join(KAGGLE_MODELS)}) or a "
                  f"Hugging Face repository owner/name")


def download_hf(repo: str, cache_dir: str | os.PathLike = "cache", revision: str | None = None,
                token: str | None = None) -> Path:
  """cache_dir/hf/<owner>--<name>/: a transformers checkpoint folder (config, safetensors,
  tokenizer), with palijudge_source.json naming the repo and the commit it came from."""
  from palijudge import hf  # pylint: disable=import-outside-toplevel
  at = f"huggingface.co/{repo}"
  hub, token = _hub(at, token)
  folder = Path(cache_dir) / "hf" / repo.replace("/", "--")
  try:
    sha = hub.HfApi(token=token).model_info(repo, revision=revision).sha
    hub.snapshot_download(repo, revision=sha, local_dir=folder, token=token,
                          allow_patterns=["*.json", "*.safetensors", hf.TOKENIZER_FILE])
  except Exception as e:  # HfHubHTTPError, GatedRepoError, network errors...
    raise _hub_error(e, at, "the checkpoint") from None
  files.write_text(folder / hf.SOURCE_FILE, json.dumps({"repo": repo, "revision": sha}) + "\n")
  return folder


def download_tokenizer(cache_dir: str | os.PathLike = "cache",
                       model_dir: str | os.PathLike | None = None, *,
                       user_file: str | os.PathLike | None = None, hf_token: str | None = None,
                       sha256: str | None = _KNOWN, progress: bool = True,
                       log: Callable[[str], None] | None = None) -> Path:
  """Returns a verified cache_dir/paligemma_tokenizer.model, from the first source
  that works: user_file, model_dir (Kaggle files), TOKENIZER_URL, the HF hub."""
  target = Path(cache_dir) / TOKENIZER_FILE
  if target.is_file():
    check_tokenizer(target, sha256=sha256)
    return target
  target.parent.mkdir(parents=True, exist_ok=True)

  def kaggle() -> Path:
    found = _tokenizer_in(Path(model_dir))
    if found is None:
      raise UserError(f"{where(model_dir)}: no tokenizer in the Kaggle model files")
    return found
  sources = ([(where(user_file), lambda: Path(user_file))] if user_file else []) + (
      [(where(model_dir), kaggle)] if model_dir is not None else []) + [
      (TOKENIZER_URL, lambda: fetch_resumable(TOKENIZER_URL, target, progress)),
      (f"huggingface.co/{HF_REPO}", lambda: _from_hub(hf_token))]
  failures = []
  for name, get in sources:
    src = None
    try:
      src = get()
      if not src.is_file():
        raise UserError(f"{name}: file not found")
      digest = check_tokenizer(src, name, sha256)
    except UserError as e:
      failures.append(str(e))
      if src is not None and src.name.endswith(".part"):
        src.unlink(missing_ok=True)  # Complete but wrong: do not resume it next time.
      continue
    (os.replace if src.name.endswith(".part") else _link_or_copy)(src, target)
    if log:
      log(f"tokenizer: {target} from {name} (sha256 {digest}, vocab {TOKENIZER_VOCAB})")
    return target
  raise UserError("no usable PaliGemma tokenizer: " + "; ".join(failures))

