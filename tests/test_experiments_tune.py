"""palijudge.experiments.tune: the search space, trials (pruning, failures, resuming),
ask/tell and 06-tune.py with fake objectives; then a real study and rerunning a record
on the tiny model (script tests)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import types

import optuna
import pytest
import yaml
from testing import PLAY, run_script

from palijudge.data import examples, splits
from palijudge.errors import UserError
from palijudge.experiments import cv, tune
from palijudge.files import Project

SPACE = """
metric: auc
baseline: {loss: focal, lr: 0.02, steps: 64, prompt: "Is this ad OK?"}
enqueue: [{loss: bce}]
pruning: {keep_top_percent: 50, startup_trials: 3}
params:
  lr: {low: 0.001, high: 0.1, log: true}
  steps: {choices: [64, 128]}
  accum: {low: 1, high: 4}
  loss: {choices: [focal, bce, combined]}
  focal_gamma: {low: 0.0, high: 5.0, step: 0.5, when: {loss: [focal, combined]}}
  bce_weight: {low: 0.0, high: 1.0, step: 0.1, when: {loss: combined}}
  focal_weight: {complement: bce_weight, when: {loss: combined}}
  prompt: {choices: ["Is this ad OK?", "Is this image appropriate?"]}
"""


def _space(tmp_path, text=SPACE) -> tune.Space:
  path = tmp_path / "space.yaml"
  path.write_text(text)
  return tune.load_space(path)


def test_default_space_and_prompt():
  space = tune.load_space()
  assert tune.DEFAULTS["prompt"] == examples.DEFAULT_PROMPT
  assert space.metric == "f_measure" and space.baseline["loss"] == "combined"
  assert {p.name for p in space.params} >= {"focal_alpha", "focal_gamma", "bce_weight",
                                             "focal_weight"}


@pytest.mark.parametrize("text, needle", [
    ("params: {lr: {low: 1, high: 0}}", "lr needs"),
    ("params: {lr: {low: 0, high: 1, log: true}}", "lr needs"),
    ("params: {steps: {choices: [64, 128]}}", "baseline/enqueue steps=256 is outside"),
    ("params: {lr: {low: 0.01, high: 1}}\nenqueue: [{lr: 2.0}]", "lr=2.0 is outside"),
    ("params: {gamma: 1}", "unknown keys ['gamma']"),
    ("params: {focal_gamma: {low: 0, high: 1, when: {loss: [ce]}}, loss: {choices: [ce]}}",
     "earlier or unsearched"),
    ("metric: mse", "metric must be one of"),
    ("params: [1, 2]", "expected a mapping"),
    ("params: {lr: [", "invalid YAML"),
])
def test_bad_space_names_the_file(tmp_path, text, needle):
  with pytest.raises(UserError, match="space.yaml") as e:
    _space(tmp_path, text)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_suggest_is_conditional_and_flat(tmp_path):
  space = _space(tmp_path)
  study = optuna.create_study(direction="maximize")
  for _ in range(12):
    cfg = tune.suggest(study.ask(), space)
    assert set(cfg) == set(tune.DEFAULTS) and cfg["steps"] in (64, 128)
    if cfg["loss"] == "combined":
      assert cfg["focal_weight"] == pytest.approx(1 - cfg["bce_weight"])
    else:
      assert cfg["bce_weight"] == 0.5 and cfg["focal_weight"] == 0.5  # baseline, inactive
    if cfg["loss"] == "bce":
      assert cfg["focal_gamma"] == 3.0


def test_to_command():
  cmd = tune.to_command(tune.DEFAULTS, cv="cv5")
  assert cmd.startswith("python playground/03-do_learn.py --cv cv5 --lr 0.03 --steps 256 ")
  for flag in ("--batch 2", "--accum 1", "--trainable attn", "--loss ce", "--focal-alpha 1.0",
               "--focal-gamma 3.0", "--bce-weight 0.5", "--focal-weight 0.5",
               "--label-smoothing 0.0", "--prompt 'Is this image appropriate based on"):
    assert flag in cmd


def _score(cfg: dict) -> float:
  return 1.0 - abs(math.log10(cfg["lr"] / 0.02)) - 0.1 * cfg["accum"]


def test_run_trials_records_fail_prune_and_resume(tmp_path):
  db, space, exp = str(tmp_path / "s.db"), _space(tmp_path), tmp_path / "experiments"
  study = tune.open_study(db, "t", seed=1)
  def good(cfg, report):
    assert report.metric == "auc" and report.record.path.parent == exp  # folds nest there
    for fold in range(3):
      report(fold, _score(cfg))
    return _score(cfg)
  out = tune.run_trials(study, space, good, 3, records_root=str(exp), log=lambda s: None)
  assert [o.state for o in out] == ["COMPLETE"] * 3
  assert out[0].config["loss"] == "focal" and out[0].config["lr"] == 0.02  # the baseline
  assert out[1].config["loss"] == "bce"  # the space's enqueue list
  assert out[0].value == pytest.approx(_score(out[0].config))
  def broken(cfg, report):
    raise FloatingPointError("loss is nan at step 7")
  seen = []
  def bad_first_fold(cfg, report):
    for fold in range(3):
      seen.append(fold)
      report(fold, -10.0)
    return -10.0
  again = tune.open_study(db, "t", seed=1)  # another day: the same study
  assert len(again.trials) == 3
  out = tune.run_trials(again, space, broken, 1, records_root=str(exp), log=lambda s: None)
  out += tune.run_trials(again, space, bad_first_fold, 1, records_root=str(exp),
                         log=lambda s: None)
  assert [o.state for o in out] == ["FAIL", "PRUNED"] and seen == [0]
  assert out[0].reason == "FloatingPointError: loss is nan at step 7"
  frozen = again.trials[3]
  assert frozen.user_attrs["fail_reason"].startswith("FloatingPointError")
  assert len(tune.open_study(db, "t").trials) == 5
  rec = exp / "t-trial-003"
  assert json.loads((rec / "eval_metrics.json").read_text())["trial"]["state"] == "FAIL"
  assert "--loss" in (rec / "config.yaml").read_text()


def test_objective_errors_do_not_stop_the_study(tmp_path):
  study = tune.open_study(str(tmp_path / "s.db"), "e")
  calls = []
  def flaky(cfg, report):
    calls.append(1)
    if len(calls) == 1:
      raise UserError("dataset/x/train.jsonl: file not found")
    return float("nan") if len(calls) == 2 else 0.5
  out = tune.run_trials(study, _space(tmp_path), flaky, 3, log=lambda s: None)
  assert [o.state for o in out] == ["FAIL", "FAIL", "COMPLETE"]
  assert "non-finite" in out[1].reason


def test_ask_tell(tmp_path):
  study, space = tune.open_study(str(tmp_path / "s.db"), "hand"), _space(tmp_path)
  n, cfg = tune.ask(study, space, records_root=str(tmp_path / "exp"), cv="cv5")
  assert n == 0 and cfg["loss"] == "focal"  # the baseline first
  assert study.trials[0].user_attrs["command"].startswith("python playground/03-do_learn.py "
                                                          "--cv cv5 ")
  assert tune.tell(study, n, 0.81).state == "COMPLETE"
  ev = json.loads((tmp_path / "exp" / "hand-trial-000" / "eval_metrics.json").read_text())
  assert ev["trial"]["value"] == 0.81
  with pytest.raises(UserError, match="trial 0 is COMPLETE"):
    tune.tell(study, n, 0.9)
  with pytest.raises(UserError, match="trial 9 is unknown"):
    tune.tell(study, 9, 0.9)
  n, _ = tune.ask(study, space)
  with pytest.raises(UserError, match="finite"):
    tune.tell(study, n, float("inf"))
  out = tune.tell(study, n, None, "OOM at batch 4")
  assert out.state == "FAIL" and study.trials[n].user_attrs["fail_reason"] == "OOM at batch 4"


def _script(name: str, monkeypatch) -> types.ModuleType:
  monkeypatch.syspath_prepend(str(PLAY))  # Where the script's `import _env` is found.
  spec = importlib.util.spec_from_file_location(name.replace("-", "_"), PLAY / name)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_tune_script(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  script = _script("06-tune.py", monkeypatch)
  project = Project.at(tmp_path)
  def main(*argv):
    return script.main(script._parser().parse_args(list(argv)), project)
  main("space")
  assert capsys.readouterr().out == tune.DEFAULT_SPACE_YAML
  def objective(cfg, name, report, **kw):  # The real one trains: see the script tests.
    if name != "cv5":
      return 0
    report(0, 0.7)
    return 0.7
  monkeypatch.setattr(cv, "cv_objective", objective)
  main("run", "--trials", "2", "--cv", "cv5")
  out = capsys.readouterr().out
  assert "study palijudge: 2 trial(s)" in out and "best: trial 0 with 0.7000" in out
  main("ask")
  assert "tell 2 SCORE" in capsys.readouterr().out
  main("tell", "2", "fail", "--reason", "out of memory")
  main("status")
  assert "2  FAIL" in capsys.readouterr().out.replace("    ", " ")
  assert (tmp_path / "experiments" / "study.db").is_file()
  assert (tmp_path / "experiments" / "palijudge-trial-002" / "config.yaml").is_file()


# --- On the tiny model, as a user runs the scripts ---------------------------------

REAL_SPACE = """
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


@pytest.mark.script
def test_a_real_study_resumes_records_failures_and_reports(tmp_project):
  proj = tmp_project.root
  rows = examples.read_jsonl(tmp_project.dataset / "data.jsonl")
  rows = [e for e in rows if e.label][:6] + [e for e in rows if not e.label][:6]  # Quicker.
  splits.write_folds(rows, 2, seed=0, stratify=True, out_dir=tmp_project.dataset / "cv2")
  (proj / "space.yaml").write_text(REAL_SPACE)
  db = "sqlite:///experiments/study.db"
  args = ["--space", "space.yaml", "--storage", db, "--study", "s"]
  run = lambda *a: run_script("06-tune.py", *a, project=tmp_project)
  out = run("run", "--trials", "3", "--cv", "cv2", "--model", "tiny", *args)
  assert (proj / "experiments" / "study.db").is_file()
  status = run("status", *args).stdout
  assert status.count("COMPLETE") == 2 and "FAIL" in status, out.stdout + status
  run("run", "--trials", "1", "--cv", "cv2", "--model", "tiny", *args)
  status = run("status", *args).stdout
  assert "4 trial(s)" in status and status.count("COMPLETE") >= 2
  asked = run("ask", "--cv", "cv2", *args).stdout
  assert "03-do_learn.py" in asked
  number = int(next(l for l in asked.splitlines() if "trial" in l.lower()).split()[1].strip(":#"))
  run("tell", number, "0.5", *args)
  assert "5 trial(s)" in run("status", *args).stdout
  run_script("07-report.py", "--storage", db, "--no-plots", project=tmp_project)
  board = (proj / "experiments" / "leaderboard.md").read_text()
  assert board.count("\n|") >= 3
  assert (proj / "experiments" / "leaderboard.html").is_file()


@pytest.mark.script
def test_rerunning_a_record_reproduces_its_metrics(tmp_project):
  proj = tmp_project.root
  run_script("03-do_learn.py", "-d", "set1", "--model", "tiny", "--steps", "3", "--experiments",
             "exp-a", project=tmp_project)
  first = proj / "exp-a" / "set1"
  command = shlex.split(yaml.safe_load((first / "config.yaml").read_text())["command"])
  assert command[0] == sys.executable and "exp-a" in command
  command = [a if a != "exp-a" else "exp-b" for a in command]
  subprocess.run(command, cwd=proj, check=True, capture_output=True,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))
  a = json.loads((first / "eval_metrics.json").read_text())
  b = json.loads((proj / "exp-b" / "set1" / "eval_metrics.json").read_text())
  assert a == b
