"""Downloads: Kaggle with a fake kagglehub, the tokenizer from a local HTTP server
(TOKENIZER_URL points at a closed local port otherwise; no test reaches the network)."""

from __future__ import annotations

import hashlib
import json
import http.server
import re
import shutil
import socket
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from palijudge.tools import download
from palijudge.errors import UserError

FIXTURE_TOK = Path(__file__).parent / "fixtures" / "paligemma-tiny" / "tokenizer.model"
NAME = "paligemma-3b-pt-224"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  with socket.socket() as s:  # a local port nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  monkeypatch.setattr(download, "TOKENIZER_URL", f"http://127.0.0.1:{port}/tok.model")
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)
  for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
    monkeypatch.delenv(var, raising=False)


@pytest.fixture
def tiny_tok(monkeypatch):  # The 512-token fixture tokenizer passes as the PaliGemma one.
  monkeypatch.setattr(download, "TOKENIZER_VOCAB", 512)
  monkeypatch.setattr(download, "TOKENIZER_SHA256",
                      hashlib.sha256(FIXTURE_TOK.read_bytes()).hexdigest())


@pytest.fixture
def creds(monkeypatch, tmp_path):
  """No credentials file, no token; KAGGLE_USERNAME/KEY set."""
  monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
  monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
  monkeypatch.setenv("KAGGLE_USERNAME", "someone")
  monkeypatch.setenv("KAGGLE_KEY", "secret")


def _fake_kagglehub(monkeypatch, fn) -> list[str]:
  calls: list[str] = []
  mod = types.ModuleType("kagglehub")
  def model_download(handle, *a, **k):
    calls.append(handle)
    return fn(handle)
  mod.model_download = model_download
  monkeypatch.setitem(sys.modules, "kagglehub", mod)
  return calls


def _kaggle_dir(tmp_path: Path, filename: str) -> Path:
  folder = tmp_path / "kagglehub" / "1"
  folder.mkdir(parents=True)
  np.savez(folder / filename, w=np.arange(3, dtype=np.float32))
  return folder


def test_download_model(monkeypatch, tmp_path, creds):
  folder = _kaggle_dir(tmp_path, download.KAGGLE_MODELS[NAME][1])
  calls = _fake_kagglehub(monkeypatch, lambda h: str(folder))
  out = download.download_model(NAME, tmp_path / "cache")
  assert out == tmp_path / "cache" / "paligemma-3b-pt-224.f16.npz"
  assert calls == ["google/paligemma/jax/paligemma-3b-pt-224"]
  with np.load(out) as f:
    np.testing.assert_array_equal(f["w"], [0, 1, 2])
  assert download.download_model(NAME, tmp_path / "cache") == out
  assert len(calls) == 1  # existing file reused


def test_download_model_other_npz_name(monkeypatch, tmp_path, creds):
  folder = _kaggle_dir(tmp_path, "renamed.npz")
  _fake_kagglehub(monkeypatch, lambda h: str(folder))
  out = download.download_model("paligemma2-3b-pt-224", tmp_path / "c")
  assert out.name == "paligemma2-3b-pt-224.b16.npz" and out.is_file()


def test_copy_fallback(monkeypatch, tmp_path, creds):
  folder = _kaggle_dir(tmp_path, download.KAGGLE_MODELS[NAME][1])
  _fake_kagglehub(monkeypatch, lambda h: str(folder))
  def refuse(*a, **k):
    raise OSError("cross-device link")
  monkeypatch.setattr(download.os, "link", refuse)
  monkeypatch.setattr(download.os, "symlink", refuse)
  out = download.download_model(NAME, tmp_path / "cache")
  assert out.is_file() and not out.is_symlink()
  assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_missing_credentials(monkeypatch, tmp_path):
  monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
  for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
    monkeypatch.delenv(var, raising=False)
  _fake_kagglehub(monkeypatch, lambda h: pytest.fail("must not download"))
  with pytest.raises(UserError, match="KAGGLE_USERNAME") as e:
    download.download_model(NAME, tmp_path / "cache")
  assert "kaggle.json" in str(e.value) and "\n" not in str(e.value)


def test_credentials_file(monkeypatch, tmp_path):
  monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
  for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
    monkeypatch.delenv(var, raising=False)
  (tmp_path / "kaggle.json").write_text('{"username": "a", "key": "b"}')
  download.check_credentials()


class _Response:
  status_code = 403


def _raise(err: Exception):
  def fn(handle):
    raise err
  return fn


def test_http_403_mentions_licence(monkeypatch, tmp_path, creds):
  err = RuntimeError("Client Error")
  err.response = _Response()
  _fake_kagglehub(monkeypatch, _raise(err))
  with pytest.raises(UserError, match="licence") as e:
    download.download_model(NAME, tmp_path / "cache")
  assert "HTTP 403" in str(e.value)
  assert "kaggle.com/models/google/paligemma" in str(e.value)


def test_http_401_from_text_paligemma2(monkeypatch, tmp_path, creds):
  _fake_kagglehub(monkeypatch, _raise(RuntimeError("401 Client Error.\n\nno")))
  with pytest.raises(UserError, match="HTTP 401") as e:
    download.download_model("paligemma2-10b-pt-224", tmp_path / "cache")
  assert "kaggle.com/models/google/paligemma-2" in str(e.value)


class NameResolutionError(OSError):
  """Named as urllib3's: the innermost cause of a requests ConnectionError."""


class MaxRetryError(Exception):
  pass


def _requests_style_failure() -> Exception:
  """What requests raises when DNS fails: a ConnectionError wrapping urllib3's errors."""
  try:
    try:
      raise NameResolutionError("<urllib3.connection.HTTPSConnection>: Failed to resolve "
                                "'www.kaggle.com' ([Errno -3] Temporary failure in name resolution)")
    except NameResolutionError as e:
      raise MaxRetryError("HTTPSConnectionPool(host='www.kaggle.com', port=443): Max retries "
                          "exceeded with url: /api/v1/models") from e
  except MaxRetryError as e:
    err = ConnectionError(str(e))
    err.__cause__ = e
    return err


def test_network_error_says_network_and_what_to_check(monkeypatch, tmp_path, creds):
  _fake_kagglehub(monkeypatch, _raise(_requests_style_failure()))
  with pytest.raises(UserError) as e:
    download.download_model(NAME, tmp_path / "cache")
  msg = str(e.value)
  assert msg.startswith("network error while downloading google/paligemma")
  assert "cannot resolve the server's name (DNS)" in msg and "HTTPS_PROXY" in msg
  assert "HTTPSConnectionPool" not in msg and "\n" not in msg
  _fake_kagglehub(monkeypatch, _raise(TimeoutError("timed out")))
  with pytest.raises(UserError, match="network error.*the connection timed out"):
    download.download_model(NAME, tmp_path / "cache")
  _fake_kagglehub(monkeypatch, _raise(ValueError("bad archive")))  # not the network
  with pytest.raises(UserError, match="could not download .*: bad archive"):
    download.download_model(NAME, tmp_path / "cache")


def test_url_network_error(tmp_path):
  with pytest.raises(UserError, match=r"network error while downloading http://127\.0\.0\.1:9/"
                                      r"t\.model: the connection was refused.*127\.0\.0\.1:9"):
    download.fetch_resumable("http://127.0.0.1:9/t.model", tmp_path / "t.model", progress=False)


def test_unknown_model(tmp_path):
  with pytest.raises(UserError, match="paligemma-3b-pt-224"):
    download.download_model("gemma-7b", tmp_path)


def test_kagglehub_missing(monkeypatch, tmp_path, creds):
  monkeypatch.setitem(sys.modules, "kagglehub", None)
  with pytest.raises(UserError, match="pip install kagglehub"):
    download.download_model(NAME, tmp_path / "cache")


def test_tokenizer_wrong_vocab_refused(tmp_path):
  model_dir = tmp_path / "kaggle"
  model_dir.mkdir()
  shutil.copyfile(FIXTURE_TOK, model_dir / download.TOKENIZER_FILE)
  with pytest.raises(UserError, match="257152"):
    download.download_tokenizer(tmp_path / "cache", model_dir)
  assert not (tmp_path / "cache" / download.TOKENIZER_FILE).exists()


def test_tokenizer_from_model_dir(monkeypatch, tmp_path, tiny_tok):
  model_dir = tmp_path / "kaggle" / "sub"
  model_dir.mkdir(parents=True)
  shutil.copyfile(FIXTURE_TOK, model_dir / "other_name.model")
  out = download.download_tokenizer(tmp_path / "cache", tmp_path / "kaggle")
  assert out == tmp_path / "cache" / "paligemma_tokenizer.model"
  assert out.read_bytes() == FIXTURE_TOK.read_bytes()
  assert download.download_tokenizer(tmp_path / "cache") == out


def test_tokenizer_cached_wrong_vocab(tmp_path):
  (tmp_path / download.TOKENIZER_FILE).write_bytes(FIXTURE_TOK.read_bytes())
  with pytest.raises(UserError, match="vocabulary is 512"):
    download.download_tokenizer(tmp_path)


class _Server:
  """Serves one payload on 127.0.0.1: Range (unless ranges=False), a first response
  cut in half then closed (cut_first), or an error `status` for every request."""

  def __init__(self, payload: bytes, cut_first=False, ranges=True, status=200):
    self.payload, self.cut, self.ranges, self.status = payload, cut_first, ranges, status
    self.seen = []  # The Range header of each request (None: no Range).
    srv = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802
        srv.seen.append(self.headers.get("Range"))
        if srv.status != 200:
          self.send_error(srv.status)
          return
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(m.group(1)) if m and srv.ranges else 0
        body, n = srv.payload[start:], len(srv.payload)
        self.send_response(206 if start else 200)
        if start:
          self.send_header("Content-Range", f"bytes {start}-{n - 1}/{n}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if srv.cut else body)
        srv.cut = False

      log_message = lambda *args: None

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/paligemma_tokenizer.model"
    threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def serve(monkeypatch):
  servers = []
  def start(payload=FIXTURE_TOK.read_bytes(), **kw):
    servers.append(_Server(payload, **kw))
    monkeypatch.setattr(download, "TOKENIZER_URL", servers[-1].url)
    return servers[-1]
  yield start
  for s in servers:
    s.httpd.shutdown()
    s.httpd.server_close()


def test_url_download_resumes_after_interruption(tmp_path, tiny_tok, serve):
  server = serve(cut_first=True)
  size, lines = FIXTURE_TOK.stat().st_size, []
  with pytest.raises(UserError, match=r"interrupted at \d+ of \d+ bytes; run again to resume"):
    download.download_tokenizer(tmp_path, progress=False)
  part = tmp_path / (download.TOKENIZER_FILE + ".part")
  assert part.stat().st_size == size // 2
  out = download.download_tokenizer(tmp_path, progress=False, log=lines.append)
  assert server.seen == [None, f"bytes={size // 2}-"]
  assert out.read_bytes() == FIXTURE_TOK.read_bytes() and not part.exists()
  assert download.TOKENIZER_SHA256 in lines[0] and server.url in lines[0]
  out.unlink()  # A server that ignores Range: the download starts over.
  server.ranges = False
  part.write_bytes(b"stale half")
  download.download_tokenizer(tmp_path, progress=False)
  assert server.seen[-1] == "bytes=10-" and out.read_bytes() == FIXTURE_TOK.read_bytes()


@pytest.mark.parametrize("code", [401, 403])
def test_url_refused_explained(tmp_path, tiny_tok, serve, code):
  serve(status=code)
  with pytest.raises(UserError) as e:
    download.download_tokenizer(tmp_path, progress=False)
  msg = str(e.value)  # One line: this source's explanation, then why the hub was skipped.
  assert f"HTTP {code}" in msg and "--tokenizer-file" in msg and "\n" not in msg
  assert "pip install huggingface_hub" in msg
  assert not list(tmp_path.iterdir())


def test_url_wrong_sha256_rejected_and_discarded(monkeypatch, tmp_path, tiny_tok, serve):
  monkeypatch.setattr(download, "TOKENIZER_SHA256", "0" * 64)
  serve()
  with pytest.raises(UserError, match="is not the known tokenizer's 0000"):
    download.download_tokenizer(tmp_path, progress=False)
  assert not list(tmp_path.iterdir())  # no .part left to resume


def test_user_file_first_then_the_next_source(tmp_path, tiny_tok, serve):
  server = serve()
  mine, bad = tmp_path / "mine.model", tmp_path / "bad.model"
  shutil.copyfile(FIXTURE_TOK, mine)
  bad.write_bytes(b"not sentencepiece")
  out = download.download_tokenizer(tmp_path / "c1", user_file=mine)
  assert out.read_bytes() == mine.read_bytes() and server.seen == []
  out = download.download_tokenizer(tmp_path / "c2", user_file=bad, progress=False)
  assert out.read_bytes() == FIXTURE_TOK.read_bytes() and server.seen == [None]


def test_hub_last_needs_token_and_licence(monkeypatch, tmp_path, tiny_tok):
  calls, refuse = [], RuntimeError("Access to model google/paligemma-3b-pt-224 is restricted")
  refuse.response = types.SimpleNamespace(status_code=401)
  def fetch(repo, name, token=None):
    calls.append((repo, name, token))
    return str(FIXTURE_TOK) if token == "hf_good" else _raise(refuse)(None)
  monkeypatch.setitem(sys.modules, "huggingface_hub",
                      types.SimpleNamespace(hf_hub_download=fetch))
  with pytest.raises(UserError, match="no Hugging Face token.*HF_TOKEN"):
    download.download_tokenizer(tmp_path, progress=False)
  monkeypatch.setenv("HF_TOKEN", "hf_wrong")
  with pytest.raises(UserError, match=r"access refused \(HTTP 401\): accept the licence"):
    download.download_tokenizer(tmp_path, progress=False)
  monkeypatch.setenv("HF_TOKEN", "hf_good")
  out = download.download_tokenizer(tmp_path, progress=False)
  assert calls[-1] == ("google/paligemma-3b-pt-224", "tokenizer.model", "hf_good")
  assert out.read_bytes() == FIXTURE_TOK.read_bytes()


def _fake_hub(monkeypatch, snapshot, sha="0123abcd"):
  """huggingface_hub stand-in: model_info(...).sha and snapshot_download."""
  class Api:
    def __init__(self, token=None):
      self.token = token
    def model_info(self, repo, revision=None):
      return types.SimpleNamespace(sha=sha)
  monkeypatch.setitem(sys.modules, "huggingface_hub",
                      types.SimpleNamespace(HfApi=Api, snapshot_download=snapshot))


def test_hf_checkpoint_folder_with_its_source(monkeypatch, tmp_path):
  calls = []
  def snapshot(repo, revision=None, local_dir=None, token=None, allow_patterns=()):
    calls.append((repo, revision, token, tuple(allow_patterns)))
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    (Path(local_dir) / "config.json").write_text("{}")
    return str(local_dir)
  _fake_hub(monkeypatch, snapshot)
  monkeypatch.setenv("HF_TOKEN", "hf_good")
  folder = download.download_hf(download.hf_repo("paligemma2-3b-pt-224"), tmp_path)
  assert folder == tmp_path / "hf" / "google--paligemma2-3b-pt-224"
  assert calls == [("google/paligemma2-3b-pt-224", "0123abcd", "hf_good",
                    ("*.json", "*.safetensors", "tokenizer.model"))]
  assert json.loads((folder / "palijudge_source.json").read_text()) == {
      "repo": "google/paligemma2-3b-pt-224", "revision": "0123abcd"}
  assert download.hf_repo("me/my-judge") == "me/my-judge"
  with pytest.raises(UserError, match="unknown model 'nope'"):
    download.hf_repo("nope")


@pytest.mark.parametrize("token, error, needle", [
    (None, None, r"no Hugging Face token: accept the licence .* then set HF_TOKEN"),
    ("hf_x", types.SimpleNamespace(status_code=403), r"access refused \(HTTP 403\)"),
    ("hf_x", types.SimpleNamespace(status_code=404), r"not found \(HTTP 404\)"),
])
def test_hf_checkpoint_errors_are_one_line(monkeypatch, tmp_path, token, error, needle):
  def snapshot(*args, **kwargs):
    err = RuntimeError("403 Client Error: Forbidden\nfor url: https://huggingface.co/...")
    err.response = error
    raise err
  _fake_hub(monkeypatch, snapshot)
  monkeypatch.delenv("HF_TOKEN", raising=False)
  monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
  with pytest.raises(UserError, match=needle) as info:
    download.download_hf("google/paligemma-3b-pt-224", tmp_path, token=token)
  assert "\n" not in str(info.value) and "huggingface.co/google/paligemma-3b-pt-224" in str(info.value)
  assert not (tmp_path / "hf" / "google--paligemma-3b-pt-224" / "palijudge_source.json").exists()
