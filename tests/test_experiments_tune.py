"""palijudge.experiments.tune: the search space, trials (pruning, failures, resuming),
ask/tell and 06-tune.py with fake objectives; then a real study and rerunning a record
on the tiny model (script tests)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import types
import uuid

import optuna
import pytest
import sqlalchemy
import yaml
from testing import PLAY, ROOT, assert_one_line_error, run_script, tool_path

from palijudge.data import examples, splits
from palijudge.errors import UserError
from palijudge.experiments import cv, leaderboard, tune
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


def test_to_command_has_the_model_first_and_every_non_default_flag():
  assert tune.to_command(tune.DEFAULTS) == (
      "python playground/03-do_learn.py --model paligemma-3b-pt-224")  # 03's defaults
  changed = {**tune.DEFAULTS, "lr": 0.01, "steps": 64, "batch": 4, "accum": 2,
             "trainable": "all", "optimizer": "adam", "loss": "combined", "focal_alpha": 0.5,
             "focal_gamma": 2.0,
             "bce_weight": 0.3, "focal_weight": 0.7, "label_smoothing": 0.1,
             "prompt": "Is this ad OK?"}
  assert set(changed) == set(tune.DEFAULTS)  # every searchable setting is changed here
  target = tune.Target("checkpoints/base.npz", "cv5", "auc", "/data/ads")
  cmd = shlex.split(tune.to_command(changed, target))
  assert cmd[:8] == ["python", "playground/03-do_learn.py", "--model", "checkpoints/base.npz",
                     "--cv", "cv5", "--cv-metric", "auc"]
  flags = dict(zip(cmd[8::2], cmd[9::2]))
  assert flags == {"--root": "/data/ads", **{tune.FLAGS[k]: str(v) for k, v in changed.items()}}


def test_the_printed_command_trains_the_trials_recipe(monkeypatch):
  from palijudge import cli
  changed = {**tune.DEFAULTS, "lr": 0.01, "loss": "combined", "bce_weight": 0.3,
             "focal_weight": 0.7, "focal_gamma": 2.0, "prompt": "Is this ad OK?"}
  args, _ = cli.parse(_script("03-do_learn.py", monkeypatch).Config,
                      shlex.split(tune.to_command(changed, tune.Target("tiny", "cv5")))[2:])
  tcfg, prompt = cv.trial_config(changed)
  assert (args.train, args.eval.prompt) == (tcfg, prompt)
  assert (args.load.model, args.cv) == ("tiny", "cv5")


def test_fixed_flags_are_03s_flags_and_reach_every_trial(tmp_path, monkeypatch):
  """`run --optimizer adam --two-stage ...`: 03-do_learn.py's own flags (from the same config
  fields), fixed in every trial's recipe and in its printed command line."""
  from palijudge import cli
  learn03 = _script("03-do_learn.py", monkeypatch).Config
  tune06 = _script("06-tune.py", monkeypatch).COMMANDS
  parser06 = cli.parser(tune06, None)
  run = next(a for a in parser06._actions if a.dest == "_command").choices["run"]
  ours = {s for a in run._actions for s in a.option_strings}
  assert {tune.FLAGS[k] for k in tune.FIXABLE} <= ours
  assert {tune.FLAGS[k] for k in tune.FIXABLE} <= {s for a in cli.parser(learn03, None)._actions
                                                   for s in a.option_strings}
  assert {"optimizer", "trainable", "warmup", "two_stage", "class_weight"} <= set(tune.FIXABLE)
  args, _ = cli.parse(tune06, ["run", "--trials", "1", "--cv", "cv5", "--optimizer", "adam",
                               "--trainable", "all", "--warmup", "0.2", "--two-stage",
                               "--class-weight", "2,1"])
  fixed = tune.fixed_flags(args.fixed)
  assert fixed == {"trainable": "all", "optimizer": "adam", "warmup": 0.2,
                   "class_weight": [2.0, 1.0], "two_stage": True}  # only those given
  assert tune.fixed_flags(cli.parse(tune06, ["run", "--trials", "1", "--cv", "cv5"])[0].fixed
                          ) == {}
  study = tune.open_study(str(tmp_path / "s.db"), "f")
  target = tune.bind(study, tune.Target("tiny", "cv5", fixed=fixed))
  seen = []
  tune.run_trials(study, tune.load_space(), lambda cfg, report: seen.append(cfg) or 0.5, 2,
                  target=target, log=lambda _: None)
  for cfg in seen:
    tcfg, _ = cv.trial_config(cfg)
    assert (tcfg.optimizer, tcfg.trainable, tcfg.warmup_percent) == ("adam", "all", 0.2)
    assert tcfg.loss.class_weight == (2.0, 1.0) and cv.learn_config(cfg).two_stage
  command = study.trials[0].user_attrs["command"]
  parsed, _ = cli.parse(learn03, shlex.split(command)[2:])
  assert (parsed.train.optimizer, parsed.train.trainable, parsed.train.warmup_percent,
          parsed.learn.two_stage, parsed.train.loss.class_weight) == (
              "adam", "all", 0.2, True, (2.0, 1.0))


def test_a_resumed_study_with_other_fixed_flags_is_refused(tmp_path):
  study = tune.open_study(str(tmp_path / "s.db"), "f")
  bound = tune.bind(study, tune.Target("tiny", "cv5", fixed={"optimizer": "adam"}))
  assert study.user_attrs["fixed"] == {"optimizer": "adam"}
  assert tune.bind(study, tune.Target()).fixed == {"optimizer": "adam"} == bound.fixed  # study's
  with pytest.raises(UserError, match=r"^study 'f' trains every trial with --optimizer adam, "
                                      r"not --optimizer adam --trainable all: give its flags"):
    tune.bind(study, tune.Target(fixed={"optimizer": "adam", "trainable": "all"}))
  # A study made before fixed flags existed fixed none; a fresh one without flags neither.
  old = tune.open_study(str(tmp_path / "s.db"), "old")
  old.set_user_attr("model", "tiny")
  with pytest.raises(UserError, match="with no fixed flags, not --optimizer adam"):
    tune.bind(old, tune.Target(fixed={"optimizer": "adam"}))
  plain = tune.open_study(str(tmp_path / "s.db"), "plain")
  tune.bind(plain, tune.Target("tiny", "cv5"))
  with pytest.raises(UserError, match="with no fixed flags, not --two-stage"):
    tune.bind(plain, tune.Target(fixed={"two_stage": True}))


def test_the_space_searches_the_optimizer(tmp_path):
  space = _space(tmp_path, "params:\n  optimizer: {choices: [sgd, adam]}\n"
                           "  lr: {low: 0.001, high: 0.1, log: true}\n")
  study = tune.open_study(str(tmp_path / "s.db"), "o", seed=1)
  outs = tune.run_trials(study, space, lambda cfg, report: float(cfg["optimizer"] == "adam"), 6,
                         log=lambda _: None)
  assert {o.config["optimizer"] for o in outs} == {"sgd", "adam"}  # baseline sgd, then both
  adam = next(o for o in outs if o.config["optimizer"] == "adam")
  assert cv.trial_config(adam.config)[0].optimizer == "adam"
  assert "--optimizer adam" in study.trials[adam.number].user_attrs["command"]


@pytest.mark.parametrize("text, needle", [
    ("params:\n  optimizer: {choices: [sgd, rmsprop]}\n",
     "optimizer 'rmsprop' is not one of sgd, adam"),
    ("baseline: {optimizer: lion}\n", "optimizer 'lion' is not one of sgd, adam"),
    ("params:\n  trainable: {choices: [attn, everything]}\n",
     "trainable 'everything' is not one of"),
])
def test_bad_choices_in_the_space_are_refused(tmp_path, text, needle):
  with pytest.raises(UserError, match=f"^{tmp_path / 'space.yaml'}: {needle}"):
    _space(tmp_path, text)


def test_a_fixed_flag_the_space_searches_or_no_recipe_is_refused():
  space = tune.load_space()  # searches lr and, with loss combined, the focal parameters
  with pytest.raises(UserError, match=r"^--lr 0.01: the search space searches lr; drop the "
                                      r"flag or lr from the space$"):
    tune.with_fixed(space, {"lr": 0.01})
  with pytest.raises(UserError, match="--focal-gamma"):  # no focal term with the ce loss
    tune.with_fixed(tune.with_fixed(tune.parse_space({}), {"loss": "ce"}), {"focal_gamma": 2.0})
  fixed = tune.with_fixed(space, {"optimizer": "adam", "runs": 2})
  assert fixed.baseline["optimizer"] == "adam" and fixed.baseline["runs"] == 2


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
  n, cfg, command = tune.ask(study, space, records_root=str(tmp_path / "exp"),
                            target=tune.Target("tiny", "cv5"))
  assert n == 0 and cfg["loss"] == "focal"  # the baseline first
  assert command == study.trials[0].user_attrs["command"]
  assert command.startswith("python playground/03-do_learn.py --model tiny --cv cv5 "
                            "--cv-metric auc ")
  # Run by hand, it writes into the trial's own record (one leaderboard row, not two).
  assert command.endswith(f" --record {tmp_path / 'exp' / 'hand-trial-000'}")
  assert tune.tell(study, n, 0.81).state == "COMPLETE"
  ev = json.loads((tmp_path / "exp" / "hand-trial-000" / "eval_metrics.json").read_text())
  assert ev["trial"]["value"] == 0.81
  with pytest.raises(UserError, match="trial 0 is COMPLETE"):
    tune.tell(study, n, 0.9)
  with pytest.raises(UserError, match="trial 9 is unknown"):
    tune.tell(study, 9, 0.9)
  n, _, _ = tune.ask(study, space)
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


def _folds(folder) -> None:
  """The files `splits.fold_paths` looks for (the objective is faked: no rows are read)."""
  (folder / splits.MANIFEST).parent.mkdir(parents=True)
  (folder / splits.MANIFEST).write_text('{"k": 2}')
  for i in (1, 2):
    for name in ("train.jsonl", "valid.jsonl"):
      (folder / splits.fold_name(i) / name).parent.mkdir(exist_ok=True)
      (folder / splits.fold_name(i) / name).write_text("")


def test_tune_script(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  script = _script("06-tune.py", monkeypatch)
  project = Project.at(tmp_path)
  from palijudge import cli

  def main(*argv):
    return script.main(cli.parse(script.COMMANDS, argv)[0], project)
  main("space")
  assert capsys.readouterr().out == tune.DEFAULT_SPACE_YAML
  def objective(cfg, folds_dir, report, **kw):  # The real one trains: see the script tests.
    if folds_dir != str(project.split("cv5")):  # dataset/cv5, as 03-do_learn.py --cv cv5 reads.
      return 0
    assert kw["quantize"] == "int8"  # Each trial loads the weights the study records.
    report(0, 0.7)
    return 0.7
  monkeypatch.setattr(cv, "cv_objective", objective)
  for bad, says in (("nosuchcv", "no fold splits here"), ("../../outside", "leaves")):
    with pytest.raises(UserError, match=says):  # Refused before the study binds to it.
      main("ask", "--cv", bad)
  _folds(tmp_path / "dataset" / "cv5")
  main("run", "--trials", "2", "--cv", "cv5", "--quantize", "int8")
  out = capsys.readouterr().out
  assert "study palijudge: 2 trial(s)" in out
  assert ("best: trial 0 with 0.7000: python playground/03-do_learn.py --model "
          "paligemma-3b-pt-224 --cv cv5 --quantize int8 --loss combined") in out  # model first
  main("ask")
  assert "tell 2 SCORE" in capsys.readouterr().out
  for score in ("1.7", "-0.1"):  # A CV score is a fraction: never the study's best.
    with pytest.raises(UserError, match=rf"trial 2: a CV f_measure lies in \[0, 1\], got {score}"):
      main("tell", "2", score)
  main("tell", "2", "fail", "--reason", "out of memory")
  with pytest.raises(UserError, match="trains every trial with no fixed flags, not --optimizer"):
    main("run", "--trials", "1", "--cv", "cv5", "--optimizer", "adam")
  with pytest.raises(SystemExit) as bad:  # argparse: one line, exit 2
    main("run", "--trials", "1", "--cv", "cv5", "--optimizer", "rmsprop")
  assert bad.value.code == 2 and "invalid choice: 'rmsprop'" in capsys.readouterr().err
  main("status")
  assert "2  FAIL" in capsys.readouterr().out.replace("    ", " ")
  assert (tmp_path / "experiments" / "study.db").is_file()
  assert (tmp_path / "experiments" / "palijudge-trial-002" / "config.yaml").is_file()


# --- Databases: URLs, drivers, racing first workers --------------------------------

def test_storage_urls_and_drivers(tmp_path, monkeypatch):
  assert tune.storage_url(None, "exp") == "sqlite:///exp/study.db"
  assert tune.storage_url("a/s.db") == "sqlite:///a/s.db"
  for plain in ("postgresql://me@db:5432/search", "postgres://me@db:5432/search"):
    assert tune.storage_url(plain) == "postgresql+psycopg://me@db:5432/search"
  assert tune.storage_url("mysql://me@db/s") == "mysql://me@db/s"
  # Nothing listens on port 1: one line, the password hidden.
  with pytest.raises(UserError, match="cannot open study") as e:
    tune.open_study("postgresql://me:s3cret@127.0.0.1:1/search", "s")
  assert "s3cret" not in str(e.value) and "\n" not in str(e.value)
  monkeypatch.setitem(sys.modules, "psycopg", None)  # the extra not installed
  with pytest.raises(UserError, match=r"no database driver: pip install -e '.\[postgres\]'"):
    tune.open_study("postgresql://me@127.0.0.1:1/search", "s")


def test_racing_first_workers_retry_schema_creation(tmp_path, monkeypatch):
  made, real, races = [], tune._storage, [2]
  def racing(url, heartbeat, grace):  # what a second worker sees on an empty PostgreSQL
    made.append(url)
    if len(made) <= races[0]:
      raise sqlalchemy.exc.IntegrityError("CREATE TYPE studydirection ...", {}, Exception(
          'duplicate key value violates unique constraint "pg_type_typname_nsp_index"'))
    return real(url, heartbeat, grace)
  monkeypatch.setattr(tune, "_storage", racing)
  monkeypatch.setattr(tune.time, "sleep", lambda s: None)
  assert tune.open_study(str(tmp_path / "s.db"), "s").study_name == "s" and len(made) == 3
  made.clear()
  races[0] = 1000
  with pytest.raises(UserError, match="IntegrityError"):  # bounded
    tune.open_study(str(tmp_path / "s.db"), "s")
  assert len(made) == tune.OPEN_TRIES
  def refused(*a):
    made.append(1)
    raise sqlalchemy.exc.OperationalError("connect", {}, Exception("connection refused"))
  made.clear()
  monkeypatch.setattr(tune, "_storage", refused)
  with pytest.raises(UserError, match="connection refused"):
    tune.open_study(str(tmp_path / "s.db"), "s")
  assert len(made) == 1  # not a race: no retry


def test_the_plan_is_enqueued_once_by_racing_workers(tmp_path):
  db = str(tmp_path / "s.db")
  first, second = tune.open_study(db, "s"), tune.open_study(db, "s")  # both before planning
  assert tune._claim(first, "planned") and not tune._claim(second, "planned")
  space = _space(tmp_path)
  a, b = tune.open_study(db, "t"), tune.open_study(db, "t")
  tune.prepare(a, space)
  tune.prepare(b, space)
  assert len(a.trials) == 2  # the baseline and the one `enqueue` entry
  late = tune.open_study(db, "u")
  assert tune._claim(late, "planned")  # another worker claimed the plan, still enqueuing it
  tune.prepare(late, space, wait_s=0.2)  # waits for it (here in vain), enqueues nothing
  assert late.trials == []
  assert optuna.study.get_all_study_names(f"sqlite:///{db}") == [
      "s", "s.planned", "t", "t.planned", "u", "u.planned"]


def test_the_study_records_its_model_cv_set_and_metric(tmp_path):
  study = tune.open_study(str(tmp_path / "s.db"), "s")
  bound = tune.bind(study, tune.Target("checkpoints/./base.npz", "cv5", "auc"))
  assert bound == tune.Target("checkpoints/base.npz", "cv5", "auc")
  assert tune.bind(study, tune.Target(None, None, "auc")) == bound  # the study's
  for other, key in ((tune.Target("tiny", "cv5", "auc"), "model tiny"),
                     (tune.Target(None, "cv3", "auc"), "cv cv3"),
                     (tune.Target(None, "cv5", "f_measure"), "metric f_measure")):
    with pytest.raises(UserError, match=f"searches checkpoints/base.npz on cv5 by auc, not {key}"):
      tune.bind(study, other)
  assert study.user_attrs["model"] == "checkpoints/base.npz"
  fresh = tune.open_study(str(tmp_path / "s.db"), "fresh")
  assert tune.bind(fresh, tune.Target()).model == "paligemma-3b-pt-224"


def test_the_study_records_its_quantization(tmp_path):
  """Scores over int4 weights do not compare with scores over the stored ones: the first
  bind records the quantization, an unset one takes it, another is refused."""
  study = tune.open_study(str(tmp_path / "s.db"), "q")
  bound = tune.bind(study, tune.Target("tiny", "cv5", quantize="int4"))
  assert bound.quantize == "int4" and study.user_attrs["quantize"] == "int4"
  assert tune.bind(study, tune.Target(None, None)).quantize == "int4"  # the study's
  for other in ("int8", "none"):
    with pytest.raises(UserError, match=f"searches tiny quantized int4 on cv5 by f_measure, "
                                        f"not quantize {'as recorded' if other == 'none' else other}"):
      tune.bind(study, tune.Target(None, None, quantize=other))
  assert tune.to_command(tune.DEFAULTS, bound).endswith("--cv cv5 --quantize int4")
  # A study made before --quantize ran its trials on the weights as stored.
  old = tune.open_study(str(tmp_path / "s.db"), "old")
  old.set_user_attr("model", "tiny")
  assert tune.bind(old, tune.Target(quantize="none")).quantize is None
  with pytest.raises(UserError, match="not quantize int8"):
    tune.bind(old, tune.Target(quantize="int8"))


def test_a_trial_warning_is_kept_and_shown(tmp_path, monkeypatch, capsys):
  study, lines = tune.open_study(str(tmp_path / "s.db"), "w"), []
  def constant(cfg, report):
    report.warn("every prediction was 'yes'")
    return 0.92
  out = tune.run_trials(study, _space(tmp_path), constant, 1, log=lines.append)
  assert out[0].warning == "every prediction was 'yes'"
  assert lines[-1] == "trial 0: warning: every prediction was 'yes'"
  assert "[warning: every prediction was 'yes']" in leaderboard.study_status(study)


SHARED_SPACE = """
metric: accuracy
baseline: {lr: 0.02}
enqueue: [{lr: 0.05}]
pruning: false
params:
  lr: {low: 0.001, high: 0.1, log: true}
"""

# A worker of the shared-study tests: waits for GO, opens the study, runs N cheap trials
# (the point is the storage). With BLOCK, its first trial writes BLOCK and hangs (to be killed).
WORKER = """
import math, os, sys, time, yaml
from palijudge.experiments import tune
url, n, ready, go, block = sys.argv[1:6]
space = tune.parse_space(yaml.safe_load(os.environ["SPACE"]), "space")
open(ready, "w").close()
while not os.path.exists(go):
  time.sleep(0.002)
study = tune.open_study(url, "shared", heartbeat=1, grace=2)
def objective(cfg, report):
  if block != "-" and not os.path.exists(block):
    time.sleep(1.5)  # a heartbeat or two written
    open(block, "w").close()
    time.sleep(600)
  time.sleep(0.1)
  return 1.0 - abs(math.log10(cfg["lr"] / 0.02))
tune.run_trials(study, space, objective, int(n), records_root=os.environ["RECORDS"])
"""


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
  """A PostgreSQL server's URL: $PALIJUDGE_TEST_POSTGRES (.ci/run starts one), else a throwaway
  server started here by .ci/postgres.sh; the tests skip where neither is possible."""
  if os.environ.get("PALIJUDGE_TEST_POSTGRES"):
    yield os.environ["PALIJUDGE_TEST_POSTGRES"]
    return
  folder, script = tmp_path_factory.mktemp("postgres"), str(ROOT / ".ci" / "postgres.sh")
  proc = subprocess.run(["bash", script, "start", folder], capture_output=True, text=True,
                        timeout=120)
  if proc.returncode == 3:
    pytest.skip(f"no PostgreSQL server: {proc.stderr.strip()}")
  assert proc.returncode == 0, proc.stderr
  try:
    yield proc.stdout.strip()
  finally:
    subprocess.run(["bash", script, "stop", folder], timeout=120, check=False)


def test_the_ci_scripts_pass_shellcheck():
  proc = subprocess.run([tool_path("shellcheck"), ROOT / ".ci" / "run", ROOT / ".ci" / "postgres.sh"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def _empty_database(server: str) -> str:
  """The URL of a new, empty database on `server`."""
  import psycopg
  url = sqlalchemy.engine.make_url(server)
  name = f"t{uuid.uuid4().hex[:12]}"
  with psycopg.connect(url.set(database="postgres").render_as_string(False),
                       autocommit=True) as conn:
    conn.execute(f"CREATE DATABASE {name}")
  return url.set(database=name).render_as_string(False)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_storage(request, tmp_path):
  """An empty study database: a SQLite file, or a new database on a PostgreSQL server."""
  if request.param == "sqlite":
    return f"sqlite:///{tmp_path / 'shared.db'}"
  return _empty_database(request.getfixturevalue("postgres_server"))


def _workers(storage: str, tmp_path, *runs: tuple[int, str]) -> list[subprocess.Popen]:
  """One worker per (trials, block file or "-"), all opening the study at the same moment."""
  env = dict(os.environ, SPACE=SHARED_SPACE, RECORDS=str(tmp_path / "exp"), JAX_PLATFORMS="cpu")
  procs, ready, go = [], [tmp_path / f"ready-{i}" for i in range(len(runs))], tmp_path / "go"
  for (n, block), flag in zip(runs, ready):
    procs.append(subprocess.Popen([sys.executable, "-c", WORKER, storage, str(n), str(flag),
                                   str(go), block], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  _wait_for(lambda: all(f.exists() for f in ready), procs)
  go.touch()
  return procs


def _wait_for(condition, procs, limit_s: float = 120) -> None:
  end = time.monotonic() + limit_s
  while not condition():
    dead = [p for p in procs if p.poll() not in (None, 0)]
    assert not dead and time.monotonic() < end, [p.communicate()[0] for p in dead]
    time.sleep(0.05)


def _baseline_runs(study) -> list[optuna.trial.FrozenTrial]:
  return [t for t in study.trials if t.params == {"lr": 0.02} and t.state.name == "COMPLETE"]


def test_workers_starting_together_on_an_empty_database_share_one_study(empty_storage, tmp_path):
  procs = _workers(empty_storage, tmp_path, (3, "-"), (3, "-"))
  outs = [p.communicate(timeout=300)[0] for p in procs]
  if [p.returncode for p in procs] != [0, 0]:  # Each worker's whole output, untruncated.
    pytest.fail("\n---\n".join(outs), pytrace=False)
  study = tune.open_study(empty_storage, "shared")
  assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6, outs
  lrs = [t.params["lr"] for t in study.trials]
  assert len(set(lrs)) == 6 and lrs[:2] == [0.02, 0.05]  # the planned trials first, once each
  assert sorted(t.number for t in study.trials) == list(range(6))


def test_a_killed_workers_trial_fails_and_is_run_again(empty_storage, tmp_path, monkeypatch,
                                                       capsys):
  block = tmp_path / "block"
  (killed,) = _workers(empty_storage, tmp_path, (1, str(block)))
  _wait_for(block.exists, [killed])  # the baseline is running, its heartbeat written
  killed.send_signal(signal.SIGKILL)
  killed.communicate(timeout=60)
  study = tune.open_study(empty_storage, "shared", heartbeat=1, grace=2)
  assert study.trials[0].state.name == "RUNNING"
  time.sleep(3.5)  # past the grace period (SQLite's clock has whole seconds)
  out = tune.run_trials(study, tune.parse_space(yaml.safe_load(SHARED_SPACE)),
                        lambda cfg, report: 0.5, 2, records_root=str(tmp_path / "exp"),
                        log=lambda s: None)
  trials = study.trials
  assert trials[0].state.name == "FAIL" and "fail_reason" not in trials[0].user_attrs
  retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
  assert retry.params == trials[0].params == {"lr": 0.02} and retry.state.name == "COMPLETE"
  assert [o.number for o in out] == [1, 2] and len(_baseline_runs(study)) == 1
  assert retry.user_attrs["planned"] and retry.user_attrs["config"]["lr"] == 0.02
  record = tmp_path / "exp" / "shared-trial-000" / "eval_metrics.json"
  assert json.loads(record.read_text())["trial"]["reason"] == tune.STALE_REASON
  status = leaderboard.study_status(study)
  assert f"[{tune.STALE_REASON}; retried as trial {retry.number}]" in status
  assert "[retry of trial 0]" in status


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


@pytest.fixture
def shared_storage(request, tmp_path):
  """The real-model test's study: a new PostgreSQL database where a server can be had, else
  a SQLite file."""
  try:
    return _empty_database(request.getfixturevalue("postgres_server"))
  except pytest.skip.Exception:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.mark.script
def test_a_real_study_shared_by_two_workers_resumes_records_and_reports(tmp_project,
                                                                         shared_storage):
  proj = tmp_project.root
  rows = examples.read_jsonl(tmp_project.dataset / "data.jsonl")
  rows = [e for e in rows if e.label][:6] + [e for e in rows if not e.label][:6]  # Quicker.
  splits.write_folds(rows, 2, seed=0, stratify=True, out_dir=tmp_project.dataset / "cv2")
  (proj / "space.yaml").write_text(REAL_SPACE)
  args = ["--space", "space.yaml", "--storage", shared_storage, "--study", "s"]
  run = lambda *a, **kw: run_script("06-tune.py", *a, project=tmp_project, **kw)
  workers = [subprocess.Popen(  # two GPUs' workers, started together
      [sys.executable, str(PLAY / "06-tune.py"), "--project", str(proj), "run", "--trials", n,
       "--cv", "cv2", "--model", "tiny", "--quantize", "int8", *args], cwd=proj, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
      for n in ("2", "1")]
  outs = [p.communicate(timeout=600)[0] for p in workers]
  assert [p.returncode for p in workers] == [0, 0], outs
  status = run("status", *args).stdout
  # The three planned trials (lr 0.03, 1e30, 0.01) ran once each; 1e30 fails.
  assert "3 trial(s)" in status and status.count("COMPLETE") == 2, outs + [status]
  assert status.count("FAIL") == 1
  best = next(line for line in status.splitlines() if line.startswith("best: "))
  assert ": python playground/03-do_learn.py --model tiny --cv cv2 --cv-metric accuracy " \
         "--quantize int8 --steps 2" in best
  proc = run("ask", "--model", "paligemma-3b-pt-224", *args, check=False)  # make ask's default
  assert_one_line_error(proc, "study 's' searches tiny quantized int8 on cv2 by accuracy, "
                        "not model paligemma-3b-pt-224")
  asked = run("ask", *args).stdout  # the study's model and folds
  assert "03-do_learn.py --model tiny --cv cv2 --cv-metric accuracy --quantize int8" in asked
  number = int(next(l for l in asked.splitlines() if "trial" in l.lower()).split()[1].strip(":#"))
  run("tell", number, "0.5", *args)
  assert "4 trial(s)" in run("status", *args).stdout
  run_script("07-report.py", "--storage", shared_storage, "--no-plots", project=tmp_project)
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


@pytest.mark.script
def test_a_hand_run_trial_and_its_run_are_one_record(tmp_project):
  from palijudge.experiments import leaderboard
  exp = tmp_project.root / "experiments"
  study, space = tune.open_study(str(tmp_project.root / "s.db"), "hand"), _space(tmp_project.root)
  n, _, command = tune.ask(study, space, records_root=str(exp), target=tune.Target("tiny", "set1"))
  folder = command.split(" --record ")[1]
  run_script("03-do_learn.py", "-d", "set1", "--model", "tiny", "--steps", "2", "--record",
             folder, project=tmp_project)
  tune.tell(study, n, 0.5)
  rows = leaderboard.collect(exp, render_plots=False)
  assert [(r.name, r.kind) for r in rows] == [("hand-trial-000", "trial")]
  assert rows[0].metrics["accuracy"] is not None and rows[0].state == "COMPLETE"
  others = leaderboard.study_rows(study, {r.name for r in rows})
  assert "hand-trial-000" not in [r.name for r in others]  # queued trials only
