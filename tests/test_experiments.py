"""Issue 4 end to end on the tiny model: 2-fold CV, a real 3-trial study that
resumes and records a failure, ask/tell, rerunning a record, the report."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest
import yaml

from palijudge.data import synthetic as synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLAY = ROOT / "playground"
SPACE = """
metric: accuracy
baseline: {loss: ce, lr: 0.03}
enqueue: [{lr: 1.0e+30}, {lr: 0.01}]
pruning: false
params:
  lr: {choices: [0.03, 0.01, 1.0e+30]}
  steps: 2
  batch: 2
  accum: 1
  trainable: attn
  loss: ce
"""


def run(cwd, script, *args, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PALIJUDGE_MODEL="tiny")
  proc = subprocess.run([sys.executable, str(PLAY / script), *map(str, args)], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=900)
  if check and proc.returncode:
    raise AssertionError(f"{script}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
  return proc


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
  root = tmp_path_factory.mktemp("exp")
  run(root, "01-download_models.py", "--model", "tiny")
  synthetic.make_dataset(root / "dataset", n=12, seed=4)
  run(root, "02-shuffle_data.py", "--folds", "2", "-n", "cv2", "--seed", "0", "--stratify")
  (root / "space.yaml").write_text(SPACE)
  return root


def test_cross_validation_reports_a_cv_score_and_records_each_fold(proj):
  out = run(proj, "03-do_learn.py", "--cv", "cv2", "--model", "tiny", "--steps", "2",
            "--cv-metric", "accuracy", "--experiments", "exp-cv").stdout
  assert "CV accuracy (2 folds): " in out
  rec = proj / "exp-cv" / "cv2"
  cv = json.loads((rec / "eval_metrics.json").read_text())["cv"]
  assert cv["metric"] == "accuracy" and len(cv["folds"]) == 2
  assert cv["score"] == pytest.approx(sum(cv["folds"]) / 2)
  assert f"{cv['score']:.4f}" in out
  for fold in ("fold-1", "fold-2"):
    assert (rec / fold / "train_log.csv").read_text().count("\n") >= 3
    assert (rec / fold / "loss.png").is_file()


def test_rerunning_a_record_reproduces_its_metrics(proj):
  run(proj, "02-shuffle_data.py", "-v", "4", "-n", "s", "--seed", "3")
  run(proj, "03-do_learn.py", "-d", "s", "--model", "tiny", "--steps", "3", "--experiments",
      "exp-a")
  first = proj / "exp-a" / "s"
  command = shlex.split(yaml.safe_load((first / "config.yaml").read_text())["command"])
  command = [a if a != "exp-a" else "exp-b" for a in command]
  subprocess.run(command, cwd=proj, check=True, capture_output=True,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))
  a = json.loads((first / "eval_metrics.json").read_text())
  b = json.loads((proj / "exp-b" / "s" / "eval_metrics.json").read_text())
  assert a == b


def test_a_real_study_resumes_records_failures_and_reports(proj):
  db = "sqlite:///experiments/study.db"
  args = ["--space", "space.yaml", "--storage", db, "--study", "s"]
  out = run(proj, "06-tune.py", "run", "--trials", "3", "--cv", "cv2", "--model", "tiny", *args)
  assert (proj / "experiments" / "study.db").is_file()
  status = run(proj, "06-tune.py", "status", *args).stdout
  assert status.count("COMPLETE") == 2 and "FAIL" in status, out.stdout + status
  run(proj, "06-tune.py", "run", "--trials", "1", "--cv", "cv2", "--model", "tiny", *args)
  status = run(proj, "06-tune.py", "status", *args).stdout
  assert "4 trial(s)" in status and status.count("COMPLETE") >= 2
  asked = run(proj, "06-tune.py", "ask", "--cv", "cv2", *args).stdout
  assert "03-do_learn.py" in asked
  number = int(next(l for l in asked.splitlines() if "trial" in l.lower()).split()[1].strip(":#"))
  run(proj, "06-tune.py", "tell", number, "0.5", *args)
  assert "5 trial(s)" in run(proj, "06-tune.py", "status", *args).stdout
  run(proj, "07-report.py", "--storage", db, "--no-plots")
  board = (proj / "experiments" / "leaderboard.md").read_text()
  assert board.count("\n|") >= 3
  assert (proj / "experiments" / "leaderboard.html").is_file()
