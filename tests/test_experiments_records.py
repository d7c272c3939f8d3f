"""palijudge.experiments.records: run folders (unique names) and their files
(config.yaml, train_log.csv, eval_metrics.json, predictions.jsonl, summary.md)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import yaml

from palijudge.errors import UserError
from palijudge.experiments import records
from palijudge.experiments.records import RunRecord


def test_unique_folders(tmp_path):
  a = RunRecord(tmp_path, "set1 run/1")
  b = RunRecord(tmp_path, "set1 run/1")
  c = RunRecord(tmp_path)
  assert a.name == "set1-run-1" and b.name == "set1-run-1.2" and a.path.is_dir()
  assert not any(RunRecord(tmp_path, "t1").name.endswith("-2") for _ in range(3))  # not the -2 flag
  assert len(c.name) == 15 and c.path.parent == tmp_path  # 20250101-120000


def test_files_round_trip(tmp_path):
  rec = RunRecord(tmp_path / "experiments", "r1")
  cfg = {"model": "tiny", "train": {"lr": 0.03, "steps": 10, "loss": ("ce",)},
         "path": tmp_path, "n": np.int64(3), "prompt": "Is this ad OK?"}
  rec.write_config(cfg)
  rec.write_config({"seed": 1}, merge=True)
  loaded = yaml.safe_load(rec.file("config.yaml").read_text())
  assert loaded == {"model": "tiny", "train": {"lr": 0.03, "steps": 10, "loss": ["ce"]},
                    "path": str(tmp_path), "n": 3, "prompt": "Is this ad OK?", "seed": 1}
  rec.log_step(1, 0.001, 2.5, 10.0, 0.5, stage="stage 1")
  rec.log_step(2, 0.002, float("nan"), None, 1.0, stage="stage 2")
  with open(rec.file("train_log.csv")) as f:
    rows = list(csv.reader(f))
  assert rows[0] == list(records.LOG_FIELDS)
  assert rows[1] == ["stage 1", "1", "0.001", "2.5", "10.0", "0.5"]
  assert rec.steps()[1] == {"stage": "stage 2", "step": 2.0, "lr": 0.002, "loss": None,
                            "grad_norm": None, "seconds": 1.0}
  rec.write_eval("before training", {"valid": {"accuracy": 0.5}})
  rec.write_eval("1st trained", {"valid": {"accuracy": np.float32(0.75)}})
  rec.write_eval("before training", {"valid": {"accuracy": 0.6}})
  ev = json.loads(rec.file("eval_metrics.json").read_text())
  assert list(ev) == ["before training", "1st trained"]
  assert ev["before training"]["valid"]["accuracy"] == 0.6
  rec.write_summary({"run": "r1", "valid": {"accuracy": 0.75}})
  assert rec.summary().startswith("# r1\n") and "| accuracy | 0.75 |" in rec.summary()
  again = RunRecord.load(rec.path)
  assert again.config()["seed"] == 1 and again.eval_metrics() == ev
  assert not [p for p in rec.path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_files_are_user_errors(tmp_path):
  rec = RunRecord(tmp_path, "bad")
  rec.file("eval_metrics.json").write_text("{oops")
  with pytest.raises(UserError, match="eval_metrics.json: invalid JSON"):
    rec.write_eval("x", {})
  rec.file("predictions.jsonl").write_text('{"p_yes": 0.5}\nnot json\n')
  with pytest.raises(UserError, match=r"predictions.jsonl:2: invalid JSON"):
    rec.predictions()
  with pytest.raises(UserError, match="no such run folder"):
    RunRecord.load(tmp_path / "missing")


def test_status_marks_finished_interrupted_failed_and_killed_runs(tmp_path):
  done, stopped, broken, killed = (RunRecord(tmp_path, n) for n in ("a", "b", "c", "d"))
  with done.running():
    assert done.status() == "running" and done.config()["pid"] > 0
  with pytest.raises(KeyboardInterrupt), stopped.running():
    raise KeyboardInterrupt
  with pytest.raises(UserError), broken.running():
    raise UserError("x.jsonl:3: bad label\nmore")
  assert [r.status() for r in (done, stopped, broken)] == ["finished", "interrupted", "failed"]
  assert broken.config()["error"] == "x.jsonl:3: bad label"
  assert done.config()["seconds"] >= 0
  killed.write_config({"status": "running", "pid": 2**22 + 12345})  # no such process
  assert killed.status() == "killed" and RunRecord(tmp_path, "e").status() == ""


def test_run_summary_says_what_ran_on_what_and_how_it_did(tmp_path):
  rec = RunRecord(tmp_path, "t1")
  rec.write_config({"command": "03-do_learn.py -d set1", "dataset": "dataset/set1",
                    "model": "tiny", "checkpoint": "checkpoints/t1.npz",
                    "train_config": {"lr": 0.03, "batch_size": 2, "steps": 8, "seed": 0,
                                     "trainable": "attn", "optimizer": "sgd",
                                     "loss": {"kind": "ce"}}})
  with rec.running():
    rec.write_eval("before training", {"valid.jsonl": {"tp": 1, "tn": 1, "fp": 1, "fn": 1,
                                                       "n": 4, "accuracy": 0.5, "auc": None}})
    rec.write_eval("1st trained", {"valid.jsonl": {
        "tp": 2, "tn": 2, "fp": 0, "fn": 0, "n": 4, "accuracy": 1.0, "precision": 1.0,
        "precision_ci": [0.34, 1.0], "brier": 0.01234}})
  rec.write_run_summary("Result: valid.jsonl\n  Tp=2 Tn=2 Fp=0 Fn=0")
  text = rec.summary()
  for want in ("# t1", "- **status**: finished", "- **dataset**: dataset/set1",
               "- **model**: tiny", "- **checkpoint**: checkpoints/t1.npz",
               "lr 0.03, batch_size 2, steps 8, trainable attn, optimizer sgd, seed 0, loss ce",
               "| before training | valid.jsonl | 4 | 0.500 | - |",
               "| 1st trained | valid.jsonl | 4 | 1.000 | 1.000 [0.34, 1.00] |", "| 0.0123 |",
               "```\nResult: valid.jsonl\n  Tp=2 Tn=2 Fp=0 Fn=0\n```"):
    assert want in text, want


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
  """Every scalar in a folder's event files, read back with TensorBoard's own reader."""
  from tensorboard.backend.event_processing import event_accumulator as accumulator
  acc = accumulator.EventAccumulator(str(folder), size_guidance={accumulator.SCALARS: 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_steps_and_stage_metrics(tmp_path):
  rec = RunRecord(tmp_path, "r1")
  with rec.running():
    rec.write_eval("before training", {"valid.jsonl": {"accuracy": 0.5, "tp": 3, "auc": None,
                                                       "accuracy_ci": [0.2, 0.8], "ok": True}})
    rec.log_step(1, 0.03, 1.5, 2.0, 0.1, stage="stage 1")
    rec.log_step(2, 0.02, 0.75, float("nan"), 0.2, stage="stage 1")
    rec.log_step(1, 0.003, 0.5, None, 0.1, stage="stage 2")
    rec.write_eval("1st trained", {"valid.jsonl": {"accuracy": 0.875, "tp": 7}})
  assert len(rec.event_files()) == 1 and rec._events is None  # Closed on the way out.
  # (tensorboardX writes a tag's spaces as underscores: "stage 1" -> "stage_1".)
  got = _scalars(rec.path)
  assert got["stage_1/loss"] == [(1, 1.5), (2, 0.75)]  # Stored as float32.
  assert got["stage_2/lr"] == [(1, pytest.approx(0.003))]
  assert got["stage_1/grad_norm"] == [(1, 2.0)]  # nan and None are not plotted.
  assert got["eval/valid.jsonl/accuracy"] == [(0, 0.5), (1, 0.875)]
  assert got["eval/valid.jsonl/tp"] == [(0, 3.0), (1, 7.0)]
  assert not any("ci" in t or "auc" in t or t.endswith("/ok") for t in got)


def test_a_folder_that_is_not_a_record_is_never_written_into(tmp_path):
  """03-do_learn.py --record dataset/set1 once wrote config.yaml and plots into the dataset."""
  (tmp_path / "set1").mkdir()
  (tmp_path / "set1" / "train.jsonl").write_text("{}\n")
  with pytest.raises(UserError, match="not a run record"):
    RunRecord.load(tmp_path / "set1")
  assert os.listdir(tmp_path / "set1") == ["train.jsonl"]


# --- Records that tell the truth ------------------------------------------------------


def test_the_summary_of_a_run_shows_its_final_status(tmp_path):
  """summary.md is written inside `running`, while the status says running: it is written
  again on the way out, so a finished (or failed) run's summary says so."""
  done, broken = RunRecord(tmp_path, "done"), RunRecord(tmp_path, "broken")
  with done.running():
    done.write_run_summary("Result: valid (1st trained)\n  Tp=1 Tn=1 Fp=0 Fn=0")
    assert "- **status**: running" in done.summary()
  with pytest.raises(UserError), broken.running():
    broken.write_run_summary()
    raise UserError("x")
  assert done.config()["status"] == "finished"
  assert "- **status**: finished" in done.summary() and "running" not in done.summary()
  assert "Result: valid (1st trained)" in done.summary()  # The blocks kept.
  assert "- **status**: failed" in broken.summary()


def test_a_step_logged_again_replaces_the_rest_of_its_stage(tmp_path):
  """A resumed run (or a restart) logs from an earlier step: the log keeps each step once,
  in order, the new rows replacing that stage's rows from that step on."""
  rec = RunRecord(tmp_path, "r")
  rec.write_config({"model": "tiny"})
  for step in (1, 2, 3):
    rec.log_step(step, 0.1, 1.0 / step, stage="stage 1")
  for step in (1, 2, 3):  # Killed after step 3; its state was saved at step 2.
    rec.log_step(step, 0.01, 0.5, stage="stage 2")
  again = RunRecord.load(rec.path)  # The resumed process opens the record anew.
  again.log_step(3, 0.01, 0.25, stage="stage 2")
  again.log_step(4, 0.01, 0.125, stage="stage 2")
  got = [(r["stage"], r["step"], r["loss"]) for r in again.steps()]
  assert got == [("stage 1", 1, 1.0), ("stage 1", 2, 0.5), ("stage 1", 3, 1 / 3),
                 ("stage 2", 1, 0.5), ("stage 2", 2, 0.5), ("stage 2", 3, 0.25),
                 ("stage 2", 4, 0.125)]
  again.log_step(1, 0.1, 9.0, stage="stage 1")  # A stage run again from its start.
  assert [(r["stage"], r["step"]) for r in again.steps()] == [
      ("stage 2", 1), ("stage 2", 2), ("stage 2", 3), ("stage 2", 4), ("stage 1", 1)]
  with open(again.file("train_log.csv")) as f:
    assert next(csv.reader(f)) == list(records.LOG_FIELDS)


def test_a_resumed_run_continues_the_record_of_the_killed_one(tmp_path):
  """open_run: a new folder for a new run; for a resumed one, the record of the run that
  was saving the same checkpoint and did not finish (not a second half-record beside it)."""
  root = tmp_path / "experiments"
  first = records.open_run(root, "x", {"checkpoint": "checkpoints/x.npz", "args": {"lr": 1}})
  with pytest.raises(KeyboardInterrupt), first.running():
    first.log_step(1, 0.1, 1.0, stage="stage 1")
    raise KeyboardInterrupt
  other = records.open_run(root, "y", {"checkpoint": "checkpoints/y.npz"})  # Another run.
  with pytest.raises(KeyboardInterrupt), other.running():
    raise KeyboardInterrupt
  again = records.open_run(root, "x", {"checkpoint": "checkpoints/x.npz", "args": {"lr": 2}},
                           resume_of="checkpoints/x.npz")
  assert again.path == first.path and sorted(p.name for p in root.iterdir()) == ["x", "y"]
  cfg = again.config()
  assert cfg["args"] == {"lr": 2} and cfg["status"] == "interrupted" and len(cfg["resumed"]) == 1
  with again.running():
    again.log_step(1, 0.1, 0.5, stage="stage 1")
  assert [r["loss"] for r in again.steps()] == [0.5]
  # Finished: a later run with --resume (no state left) gets a record of its own.
  new = records.open_run(root, "x", {"checkpoint": "checkpoints/x.npz"},
                         resume_of="checkpoints/x.npz")
  assert new.path != first.path and new.name == "x.2" and "resumed" not in new.config()
