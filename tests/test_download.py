"""Kaggle download logic, with kagglehub replaced by a fake module (no network)."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from palijudge import download
from palijudge.errors import UserError

FIXTURE_TOK = Path(__file__).parent / "fixtures" / "paligemma-tiny" / "tokenizer.model"
NAME = "paligemma-3b-pt-224"


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


def test_network_error(monkeypatch, tmp_path, creds):
  _fake_kagglehub(monkeypatch, _raise(ConnectionError("Name resolution failed")))
  with pytest.raises(UserError, match="Name resolution failed"):
    download.download_model(NAME, tmp_path / "cache")


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


def test_tokenizer_from_model_dir(monkeypatch, tmp_path):
  monkeypatch.setattr(download, "TOKENIZER_VOCAB", 512)
  model_dir = tmp_path / "kaggle" / "sub"
  model_dir.mkdir(parents=True)
  shutil.copyfile(FIXTURE_TOK, model_dir / "other_name.model")
  out = download.download_tokenizer(tmp_path / "cache", tmp_path / "kaggle")
  assert out == tmp_path / "cache" / "paligemma_tokenizer.model"
  assert out.read_bytes() == FIXTURE_TOK.read_bytes()
  assert download.download_tokenizer(tmp_path / "cache") == out


def test_tokenizer_from_url(monkeypatch, tmp_path):
  monkeypatch.setattr(download, "TOKENIZER_VOCAB", 512)
  urls = []
  def fetch(url, dst):
    urls.append(url)
    shutil.copyfile(FIXTURE_TOK, dst)
  monkeypatch.setattr(download, "_fetch_url", fetch)
  out = download.download_tokenizer(tmp_path / "cache")
  assert urls == [download.TOKENIZER_URL] and out.is_file()
  assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_tokenizer_cached_wrong_vocab(tmp_path):
  (tmp_path / download.TOKENIZER_FILE).write_bytes(FIXTURE_TOK.read_bytes())
  with pytest.raises(UserError, match="vocabulary is 512"):
    download.download_tokenizer(tmp_path)
