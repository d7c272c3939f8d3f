"""The numbered scripts end to end, as a user runs them, and their bad input."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from palijudge.data import synthetic as synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLAY = ROOT / "playground"


def run(script: str, *args, cwd, check=True) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(PLAY / script), *map(str, args)], cwd=cwd,
                        capture_output=True, text=True, env=env, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def assert_one_line_error(proc, *needles):
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  err = proc.stderr.strip()
  assert "Traceback" not in proc.stderr, proc.stderr
  assert len(err.splitlines()) == 1, err
  for needle in needles:
    assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
  """A working folder with the tiny model in cache/ and a small dataset."""
  root = tmp_path_factory.mktemp("proj")
  run("01-download_models.py", "--model", "tiny", cwd=root)
  synthetic.make_dataset(root / "dataset", n=24, seed=3)
  # The split other tests use; test_split_train_validate_end_to_end checks it.
  run("02-shuffle_data.py", "-v", "6", "-n", "set1", "--seed", "1", "--stratify", cwd=root)
  return root


def test_download_tiny_writes_model_and_tokenizer(project):
  assert (project / "cache" / "tiny.npz").is_file()
  assert (project / "cache" / "tiny_tokenizer.model").is_file()


def test_split_train_validate_end_to_end(project):
  out = run("02-shuffle_data.py", "-v", "6", "-n", "set1", "--seed", "1", "--stratify",
            cwd=project).stdout
  train = (project / "dataset/set1/train.jsonl").read_text().splitlines()
  valid = (project / "dataset/set1/valid.jsonl").read_text().splitlines()
  assert len(train) == 18 and len(valid) == 6 and "valid.jsonl: 6" in out
  proc = run("03-do_learn.py", "-d", "set1", "-w", "t1", "--model", "tiny", "--steps", "4",
             "--batch", "2", "--trainable", "all", "--optimizer", "adam", "--lr", "1e-3",
             "--print-every", "2", "--json", cwd=project)
  lines = proc.stdout.splitlines()
  assert "step:  1/ 4   lr: " in proc.stdout  # The colab pads both to 2 digits.
  assert any(re.fullmatch(r"step:  4/ 4   lr: 0\.\d{5}   loss: \d+\.\d{4}", l) for l in lines)
  for tag in ("before training", "1st trained"):
    for name in ("all", "train.jsonl", "valid.jsonl"):
      assert f"Result: dataset/set1/{name} ({tag})" in proc.stdout
  blocks = [json.loads(l) for l in lines if l.startswith("{")]
  assert len(blocks) == 6 and all(b["tp"] + b["tn"] + b["fp"] + b["fn"] > 0 for b in blocks)
  all_after = [b for b in blocks if b["file"].endswith("all") and b["stage"] == "1st trained"]
  assert sum(all_after[0][k] for k in ("tp", "tn", "fp", "fn")) == 24
  ckpt = project / "checkpoints" / "t1.npz"
  assert ckpt.is_file()
  proc = run("04-validate.py", "-m", ckpt, "dataset/set1/valid.jsonl", "--scores", "s.jsonl",
             cwd=project)
  assert proc.stdout.startswith("Result: dataset/set1/valid.jsonl\n  Tp=")
  rows = [json.loads(l) for l in (project / "s.jsonl").read_text().splitlines()]
  assert len(rows) == 6 and all(0 <= r["p_yes"] <= 1 for r in rows)
  assert all(r["pred"] == ("yes" if r["p_yes"] >= 0.5 else "no") for r in rows)
  proc = run("04-validate.py", "-m", ckpt, "dataset/set1/valid.jsonl", "--mode", "decode",
             cwd=project)
  assert "invalid answers: " in proc.stdout


def test_split_shell_wrapper_passes_flags(project):
  proc = subprocess.run(["bash", str(PLAY / "02-shuffle_data.sh"), "-v", "4", "-n", "sh",
                         "--seed", "2"], cwd=project, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert len((project / "dataset/sh/valid.jsonl").read_text().splitlines()) == 4


def test_split_is_reproducible_from_seed(project):
  for name in ("a", "b"):
    run("02-shuffle_data.py", "-v", "5", "-n", name, "--seed", "7", cwd=project)
  a = (project / "dataset/a/valid.jsonl").read_bytes()
  assert a == (project / "dataset/b/valid.jsonl").read_bytes()


def _write(path: pathlib.Path, rows: list[str]) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(r + "\n" for r in rows))
  return path


def test_bad_label_names_file_and_line(project):
  good = (project / "dataset/data.jsonl").read_text().splitlines()[0]
  bad = json.dumps(dict(json.loads(good), suffix="OK"))
  data = _write(project / "dataset/bad/data.jsonl", [good, bad])
  proc = run("02-shuffle_data.py", "-v", "1", "-n", "x", "--data", data, cwd=project,
             check=False)
  assert_one_line_error(proc, "bad/data.jsonl:2", "'OK'")
  assert not (project / "dataset/x").exists()


def test_v_larger_than_data_is_refused(project):
  proc = run("02-shuffle_data.py", "-v", "500", "-n", "big", cwd=project, check=False)
  assert_one_line_error(proc, "500")
  assert not (project / "dataset/big").exists()


def test_empty_and_unreadable_datasets(project):
  empty = _write(project / "dataset/e/data.jsonl", [])
  assert_one_line_error(run("02-shuffle_data.py", "-v", "1", "-n", "e1", "--data", empty,
                            cwd=project, check=False), "e/data.jsonl")
  broken = _write(project / "dataset/e/broken.jsonl", ['{"image": "x.png", "suffix": "yes"',])
  assert_one_line_error(run("02-shuffle_data.py", "-v", "1", "-n", "e2", "--data", broken,
                            cwd=project, check=False), "broken.jsonl:1")


def test_missing_escaping_and_corrupt_images(project):
  cases = {
      "missing": '{"prefix": "", "suffix": "yes", "image": "images/nope.png"}',
      "escape": '{"prefix": "", "suffix": "yes", "image": "../../etc/passwd"}',
  }
  for name, row in cases.items():
    f = _write(project / f"dataset/{name}.jsonl", [row])
    proc = run("04-validate.py", "--model", "tiny", f, cwd=project, check=False)
    assert_one_line_error(proc, f"{name}.jsonl:1")
  (project / "dataset/images/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  f = _write(project / "dataset/corrupt.jsonl",
             ['{"prefix": "", "suffix": "no", "image": "images/corrupt.png"}'])
  proc = run("04-validate.py", "--model", "tiny", f, "--scores", "c.jsonl", cwd=project,
             check=False)
  assert_one_line_error(proc, "corrupt.jsonl:1", "corrupt.png")
  assert not (project / "c.jsonl").exists()


def test_checkpoint_for_another_model_is_refused(project, tmp_path):
  from palijudge import checkpoint
  from palijudge.model import config as config
  from palijudge.model import paligemma as model
  cfg = config.from_dict(dict(config.PRESETS["tiny"], image_size=112))
  other = tmp_path / "other.npz"
  checkpoint.save(other, model.init_params(cfg, 0), None)
  tiny_json = tmp_path / "tiny.json"
  tiny_json.write_text(config.preset("tiny").to_json())
  proc = run("04-validate.py", "--model", other, "--model-config", tiny_json,
             "--tokenizer", project / "cache/tiny_tokenizer.model", "dataset/set1/valid.jsonl",
             cwd=project, check=False)
  assert_one_line_error(proc, "other.npz", "64 image tokens (8x8 patches)",
                        "256 (16x16)", "another image size")


def test_missing_weights_say_how_to_get_them(project, tmp_path):
  data = project / "dataset/data.jsonl"
  proc = run("04-validate.py", "--model", "paligemma-3b-pt-224", "--root", data.parent, data,
             cwd=tmp_path, check=False)
  assert_one_line_error(proc, "01-download_models.py")


def test_bad_threshold_and_flags(project):
  proc = run("04-validate.py", "--model", "tiny", "--threshold", "1.5",
             "dataset/set1/valid.jsonl", cwd=project, check=False)
  assert_one_line_error(proc, "--threshold")
  proc = run("03-do_learn.py", "-d", "set1", "--model", "tiny", "--lr=-1", cwd=project,
             check=False)
  assert_one_line_error(proc, "--lr")


def test_params_script_matches_official_list():
  proc = run("00-params.py", "--model", "paligemma-3b-pt-224", cwd=ROOT)
  ours = [l.split("\t")[:2] for l in proc.stdout.splitlines() if not l.startswith("#")]
  ref_lines = (ROOT / "tests/fixtures/param_shapes_3b.txt").read_text().splitlines()
  ref = [l.split("\t")[:2] for l in ref_lines if l and not l.startswith("#")]
  assert ours == ref
  assert "# total_params\t2923335408" in proc.stdout
