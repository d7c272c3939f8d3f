"""palijudge.resolve: the one step that decides a script's models, threshold, paths and
output from its flags, the project and the checkpoints it reads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from palijudge import checkpoint, cli, configs
from palijudge.errors import UserError
from palijudge.files import Project
from palijudge.options import group
from palijudge.resolve import Save, model_file, resolve


@dataclasses.dataclass(frozen=True)
class Judge:
  """A judging script's tree, as 04-validate.py composes one."""
  root: str | None = cli.root_option()
  load: configs.LoadConfig = group(configs.LoadConfig, "model", defaults={"model": "tiny"})
  eval: configs.EvalConfig = group(configs.EvalConfig, "evaluation")
  judge: configs.JudgeConfig = group(configs.JudgeConfig, "judge")
  eval_set: tuple[str, ...] = cli.eval_set_option()


@dataclasses.dataclass(frozen=True)
class Trainer:
  """A training script's tree, as 03-do_learn.py composes one."""
  load: configs.LoadConfig = group(configs.LoadConfig, "model", defaults={"model": "tiny"})
  eval: configs.EvalConfig = group(configs.EvalConfig, "evaluation")


def _judge(argv) -> Judge:
  return cli.parse(Judge, argv)[0]


def _checkpoints(folder, thresholds) -> list[str]:
  paths = []
  for i, t in enumerate(thresholds):
    paths.append(str(folder / f"c{i}.npz"))
    meta = {"threshold": t} if t is not None else {}
    checkpoint.write_npz(paths[-1], [("params/x", np.zeros(1))], meta)
  return paths


# --- The threshold: the stored values read here, decided by EvalConfig.decided ---------

def test_stored_thresholds_are_read_from_the_judged_checkpoints(tmp_path):
  project = Project.at(tmp_path)
  paths = _checkpoints(tmp_path, (0.3, 0.3, 0.6))
  logs: list[str] = []
  agree = resolve(_judge(["-m", ",".join(paths[:2])]), project, log=logs.append)
  assert agree.models == tuple(paths[:2]) and agree.eval.threshold == 0.3 and not logs
  disagree = resolve(_judge(["-m", paths[0], "-m", paths[1], "-m", paths[2]]), project,
                     log=logs.append)
  assert disagree.eval.threshold == 0.5 and len(logs) == 1 and "0.3, 0.3, 0.6" in logs[0]
  preset = resolve(_judge([]), project)  # --model tiny: a name, no file, nothing stored.
  assert preset.models == () and preset.eval.threshold == 0.5


def test_the_flag_wins_over_what_checkpoints_store(tmp_path):
  paths = _checkpoints(tmp_path, (0.3,))
  r = resolve(_judge(["-m", paths[0], "--threshold", "0.7"]), Project.at(tmp_path))
  assert r.eval.threshold == 0.7


def test_a_model_file_given_as_model_judges_with_its_threshold(tmp_path):
  """No -m: --model judges when it names a checkpoint (04, 13, 17's base side)."""
  paths = _checkpoints(tmp_path, (0.35,))
  r = resolve(_judge(["--model", paths[0]]), Project.at(tmp_path))
  assert r.models == (paths[0],) and r.eval.threshold == 0.35
  base_side = resolve(_judge(["--model", paths[0]]), Project.at(tmp_path), [])
  assert base_side.models == () and base_side.eval.threshold == 0.35


def test_a_trainer_does_not_take_the_threshold_of_the_model_it_starts_from(tmp_path):
  paths = _checkpoints(tmp_path, (0.35,))
  cfg = cli.parse(Trainer, ["--model", paths[0]])[0]
  r = resolve(cfg, Project.at(tmp_path), judges=False)
  assert r.models == (paths[0],) and r.eval.threshold == 0.5
  assert resolve(cfg, Project.at(tmp_path)).eval.threshold == 0.35  # A judge would.


def test_decode_mode_has_no_threshold(tmp_path):
  paths = _checkpoints(tmp_path, (0.35,))
  r = resolve(_judge(["-m", paths[0], "--mode", "decode"]), Project.at(tmp_path))
  assert r.eval.threshold is None


# --- The models and the paths --------------------------------------------------------

def test_models_come_from_the_scripts_argument_then_m_then_a_model_file(tmp_path):
  project = Project.at(tmp_path)
  paths = _checkpoints(tmp_path, (None, None))
  cfg = _judge(["-m", paths[0]])
  assert resolve(cfg, project).models == (paths[0],)
  assert resolve(cfg, project, [paths[1]]).models == (paths[1],)  # 05, 09, 15, 17's own.
  assert resolve(cfg, project, [None]).models == ()                 # 15 without -l.
  trainer = cli.parse(Trainer, [])[0]
  assert resolve(trainer, project).models == ()                     # A preset is a name.


def test_a_model_folder_is_found_in_the_project_wherever_the_command_runs(
    tmp_path, monkeypatch):
  """--model NAME: a .npz or a folder (transformers) under the project root is a file, from
  any cwd, for loading and for the inputs an output may not replace alike; a preset is a name."""
  from palijudge import loader
  project = Project.at(tmp_path / "project")
  (project.root / "models" / "hf").mkdir(parents=True)
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  assert model_file("models/hf", project) == str(project.root / "models" / "hf")
  assert model_file("paligemma-3b-pt-224", project) is None
  assert model_file("checkpoints/x.npz", project) == "checkpoints/x.npz"  # Not there (yet).
  seen = []

  def fake_resolve(path, *a, **k):
    seen.append(path)
    return type("Spec", (), {"inputs": []})()
  monkeypatch.setattr(loader, "resolve", fake_resolve)
  r = resolve(cli.parse(Trainer, ["--model", "models/hf"])[0], project)
  assert r.models == (str(project.root / "models" / "hf"),) and r.inputs() == []
  assert resolve(cli.parse(Trainer, [])[0], project).inputs() == [] and seen[-1] == "tiny"
  assert seen[0] == str(project.root / "models" / "hf")


def test_the_checkpoint_a_trainer_writes(tmp_path, monkeypatch):
  project = Project.at(tmp_path / "p")
  monkeypatch.chdir(tmp_path)
  cfg = cli.parse(Trainer, [])[0]
  assert resolve(cfg, project).save_to is None
  w = resolve(cfg, project, save=Save("-w", "run1")).save_to
  assert w == str(project.checkpoints.resolve() / "run1.npz")
  with pytest.raises(UserError, match="-w '../x.npz': the name leaves"):  # A name below
    resolve(cfg, project, save=Save("-w", "../x"))                        # checkpoints/.
  s = resolve(cfg, project, save=Save("-s", "out/x.npz", True)).save_to  # 15's -s: a path too.
  assert s == str(tmp_path / "out" / "x.npz")
  with pytest.raises(UserError, match="must end in .npz"):
    resolve(cfg, project, save=Save("-s", "out/x", True))


def test_eval_sets(tiny_project):
  r = resolve(_judge(["--eval-set", f"safe={tiny_project.dataset / 'data.jsonl'}"]),
              tiny_project)
  sets = r.eval_sets()
  assert list(sets) == ["safe"] and len(sets["safe"]) == 24
  with pytest.raises(UserError, match="already used"):
    r.eval_sets(taken=["safe"])
  with pytest.raises(UserError, match="NAME=FILE"):
    resolve(_judge(["--eval-set", "safe.jsonl"]), tiny_project).eval_sets()


def test_the_root_rule(tiny_project, tmp_path):
  """--root when given; else a split's recorded root (data.splits, tested there); else
  dataset/ for a file inside it, else the file's own folder; none: the project's dataset/."""
  r = resolve(_judge([]), tiny_project)
  assert r.root() == str(tiny_project.dataset)
  assert r.root(tiny_project.dataset / "data.jsonl") == str(tiny_project.dataset)
  outside = tmp_path / "elsewhere" / "d.jsonl"
  assert r.root(outside) == str(outside.parent)
  given = resolve(_judge(["--root", str(tmp_path)]), tiny_project)
  assert given.root(outside) == str(tmp_path)
