"""learn.py: the users' iteration (runs, stages, selection, what is saved)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

from palijudge import configs
from palijudge import checkpoint, learn, loader, train
from palijudge.evaluation import probe, scoring
from palijudge import params as params_lib
from palijudge.errors import UserError
from palijudge.model import lora
from palijudge.phases import Phases

NAMES = ("all", "train", "valid")


def _quiet(*_):
  return None


def test_runs_keep_the_best_by_the_chosen_metric(tiny_lm, tiny_examples, tmp_path):
  _, tr, va = tiny_examples
  tcfg = train.TrainConfig(steps=2, batch_size=2, lr=0.3)
  logs = []
  result = learn.learn(tiny_lm, tr, va, tcfg, configs.EvalConfig().resolved(),
                       learn.LearnConfig(runs=3, select="auc"), names=NAMES,
                       save_to=str(tmp_path / "best.npz"), log=logs.append)
  scores = [float(l.split("= ")[1]) for l in logs if re.match(r"run \d+: valid auc = ", l)]
  assert len(scores) == 3
  best = int(np.argmax(scores))  # First of equals wins, as in the loop.
  assert f"best run: {best + 1}/3 (seed {1000 * best})" in "\n".join(logs)
  meta = checkpoint.read_meta(tmp_path / "best.npz")
  assert meta["train_config"]["seed"] == 1000 * best
  assert learn.selection_score(result.after["valid"], "auc") == pytest.approx(scores[best],
                                                                              abs=1e-4)
  # The spread over the runs, each run's interval, and whether the winner's lead is noise.
  assert sum(l.startswith("valid auc over 3 runs: mean ") for l in logs) == 1
  assert sum(l.startswith("  run ") and "  95% interval " in l for l in logs) == 3
  lead = next(l for l in logs if l.startswith("lead of run ") or " tie on valid auc " in l)
  assert lead.startswith((f"lead of run {best + 1} over run ", f"run {best + 1} and run "))
  assert "McNemar p" not in lead and ("paired bootstrap of the ROC-AUC" in lead or " tie " in lead)


def test_a_run_record_gets_intervals_and_a_summary(tiny_lm, tiny_examples, tmp_path):
  from palijudge.experiments import records
  _, tr, va = tiny_examples
  rec = records.RunRecord(tmp_path / "exp", "r")
  learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=1, batch_size=2),
              configs.EvalConfig().resolved(), names=NAMES, record=rec, log=_quiet)
  valid = rec.eval_metrics()["1st trained"]["valid"]
  assert len(valid["accuracy_ci"]) == 2 and valid["accuracy_ci"][0] <= valid["accuracy"]
  assert rec.summary().count("  95% interval: accuracy [") == 3  # all, train, valid.


def test_a_two_stage_record_keeps_its_stages_in_order_tagged_and_once(tiny_lm, tiny_examples,
                                                                       tmp_path):
  """eval_metrics.json and summary.md: before training, 1st trained, 2nd trained, in that
  order, no `after training` copy of the last; the Result blocks keep their stage tag; the
  predictions and the headline name the stage they are of; the summary's status is final."""
  from palijudge.experiments import leaderboard, records
  _, tr, va = tiny_examples
  rec = records.RunRecord(tmp_path / "exp", "r")
  rec.write_config({"dataset": "dataset/set1"})
  with rec.running():
    learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=1, batch_size=2),
                configs.EvalConfig().resolved(), learn.LearnConfig(two_stage=True),
                names=NAMES, record=rec, log=_quiet)
  assert list(rec.eval_metrics()) == ["before training", "1st trained", "2nd trained"]
  cfg, text = rec.config(), rec.summary()
  assert cfg["final_stage"] == "2nd trained" and cfg["predictions_of"] == "valid, 2nd trained"
  table = [l.split("|")[1].strip() for l in text.splitlines() if l.startswith("| ") and
           "valid" in l]
  assert table == ["before training", "1st trained", "2nd trained"]
  assert "Result: valid (2nd trained)" in text and "Result: all (2nd trained)" in text
  assert "- **status**: finished" in text
  assert [r["stage"] for r in rec.steps()] == ["stage 1", "stage 2"]
  row = leaderboard.row_of(records.RunRecord.load(rec.path), tmp_path / "exp")
  second = rec.eval_metrics()["2nd trained"]["valid"]
  assert row.metrics["accuracy"] == second["accuracy"] and row.evaluated_on.endswith(" valid")


def test_a_lottery_record_heads_with_the_kept_run(tiny_lm, tiny_examples, tmp_path):
  """--runs: every run's stage in eval_metrics.json, in order; final_stage names the kept
  run's, and the leaderboard's numbers are that run's, not the last one's."""
  from palijudge.experiments import leaderboard, records
  _, tr, va = tiny_examples
  rec = records.RunRecord(tmp_path / "exp", "r")
  res = learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=1, batch_size=2, lr=0.3),
                    configs.EvalConfig().resolved(), learn.LearnConfig(runs=2, select="auc"),
                    names=NAMES, record=rec, log=_quiet)
  ev = rec.eval_metrics()
  assert list(ev) == ["before training", "run 1, 1st trained", "run 2, 1st trained"]
  final = rec.config()["final_stage"]
  assert final in ev and ev[final]["valid"]["accuracy"] == res.after["valid"].metrics()["accuracy"]
  row = leaderboard.row_of(records.RunRecord.load(rec.path), tmp_path / "exp")
  assert row.metrics["auc"] == ev[final]["valid"]["auc"]


def test_two_stages_run_the_second_at_a_tenth_of_the_rate(tiny_lm, tiny_examples):
  _, tr, va = tiny_examples
  logs = []
  learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=2, batch_size=2, lr=0.02),
              configs.EvalConfig().resolved(), learn.LearnConfig(two_stage=True), names=NAMES,
              log=logs.append)
  stages = [l for l in logs if l.startswith("training stage")]
  assert [s.split(",")[0] for s in stages] == ["training stage 1: lr 0.02",
                                               "training stage 2: lr 0.002"]
  assert sum(l.startswith("Result: valid (2nd trained)") for l in logs) == 1


def test_delta_checkpoint_loads_over_its_verified_base(tiny_lm, tiny_examples, tmp_path):
  _, tr, va = tiny_examples
  base = tmp_path / "base.npz"
  shutil.copyfile(tiny_lm.spec.weights, base)
  lm = loader.load(loader.ModelSpec(tiny_lm.cfg, str(base), tiny_lm.spec.tokenizer, "base"),
                   trainable="attn")
  tcfg = train.TrainConfig(steps=2, batch_size=2)
  for name, full in (("delta.npz", False), ("full.npz", True)):
    learn.learn(lm, tr, va, tcfg, configs.EvalConfig().resolved(), learn.LearnConfig(full=full),
                names=NAMES, save_to=str(tmp_path / name), log=_quiet)
  delta, full_path = tmp_path / "delta.npz", tmp_path / "full.npz"
  names = checkpoint.param_names(delta)
  assert names and all(n.startswith("llm/layers/attn/") for n in names)
  assert os.path.getsize(delta) < os.path.getsize(full_path) / 2
  loaded = loader.load(loader.resolve(str(delta)), trainable="attn")
  with np.load(full_path) as full:
    for name, leaf in params_lib.flatten(loaded.params).items():
      np.testing.assert_array_equal(np.asarray(leaf), full["params/" + name], err_msg=name)
  with open(base, "r+b") as f:  # Change the base: the delta must refuse it.
    f.seek(-8, os.SEEK_END)
    f.write(b"\0" * 8)
  with pytest.raises(UserError, match="sha256"):
    loader.resolve(str(delta))
  base.unlink()
  with pytest.raises(UserError, match="missing"):
    loader.resolve(str(delta))


def test_lora_trains_and_round_trips_as_an_adapter_only_delta(tiny_lm, tiny_examples, tmp_path):
  _, tr, va = tiny_examples
  lm = loader.load(tiny_lm.spec, trainable="lora")
  tcfg = train.TrainConfig(trainable="lora", optimizer="adam", lr=0.01, steps=4, batch_size=2,
                           lora_rank=4)
  ecfg = configs.EvalConfig().resolved()
  res = learn.learn(lm, tr, va, tcfg, ecfg, names=NAMES, save_to=str(tmp_path / "lora.npz"),
                    log=_quiet)
  names = checkpoint.param_names(tmp_path / "lora.npz")
  assert names and all(n.startswith(lora.PREFIX) for n in names)
  loaded = loader.load(loader.resolve(str(tmp_path / "lora.npz")), trainable="lora")
  np.testing.assert_allclose(scoring.evaluate(loaded, va, ecfg).p_yes,
                             res.after["valid"].p_yes, atol=1e-5)
  b = params_lib.flatten(loaded.params)["llm/layers/lora/mlp/linear/b"]
  assert np.abs(np.asarray(b)).max() > 0  # The adapters were trained.


def test_an_unwritable_checkpoint_fails_before_any_work(tiny_lm, tiny_examples, tmp_path):
  _, tr, va = tiny_examples
  (tmp_path / "file").write_text("x")
  logs = []
  with pytest.raises(UserError, match="file"):
    learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=2), configs.EvalConfig().resolved(),
                names=NAMES, save_to=str(tmp_path / "file" / "x.npz"), log=logs.append)
  assert not logs  # Nothing evaluated, nothing trained.


def test_phases_time_every_part_of_the_iteration(tiny_lm, tiny_examples):
  _, tr, va = tiny_examples
  phases = Phases(peak=lambda: None)
  learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=3, batch_size=2),
              configs.EvalConfig().resolved(), learn.LearnConfig(two_stage=True), names=NAMES,
              phases=phases, log=_quiet)
  names = [p.name for p in phases.records]
  assert names == ["before_evaluation", "compilation", "training", "after_evaluation",
                   "compilation", "training", "after_evaluation"]
  assert all(p.seconds >= 0 and p.ok for p in phases.records)
  assert phases.records[1].seconds > 0  # The first stage compiles its step.
  assert "| training |" in phases.table()


def test_a_killed_save_leaves_nothing_behind_after_the_next_run(tiny_lm, tiny_examples, tmp_path):
  import subprocess
  import sys
  _, tr, va = tiny_examples
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = tmp_path / f".x.npz.{dead}.abc123.tmp"
  stale.write_bytes(b"half a checkpoint")
  logs = []
  learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=1, batch_size=2),
              configs.EvalConfig().resolved(), names=NAMES, save_to=str(tmp_path / "x.npz"),
              log=logs.append)
  assert not stale.exists() and (tmp_path / "x.npz").is_file()
  assert any(stale.name in l for l in logs)
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_keep_all_saves_every_run_as_a_loadable_delta(tiny_lm, tiny_examples, tmp_path):
  _, tr, va = tiny_examples
  stale = tmp_path / "x.run3.npz"  # From an earlier lottery with more runs.
  stale.write_bytes(b"old")
  logs = []
  result = learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=2, batch_size=2, lr=0.3),
                       configs.EvalConfig().resolved(), learn.LearnConfig(runs=2, keep="all"),
                       names=NAMES, save_to=str(tmp_path / "x.npz"), log=logs.append)
  assert not stale.exists() and any("removed x.run3.npz" in l for l in logs)
  assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["x.npz", "x.run1.npz",
                                                           "x.run2.npz"]
  best = checkpoint.read_meta(tmp_path / "x.npz")["train_config"]["seed"]
  for run in (1, 2):
    path = tmp_path / f"x.run{run}.npz"
    assert path == pathlib.Path(learn.run_path(str(tmp_path / "x.npz"), run))
    assert checkpoint.is_delta(path)
    assert checkpoint.read_meta(path)["train_config"]["seed"] == 1000 * (run - 1)
    loaded = loader.load(loader.resolve(str(path)), trainable="attn")
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(loaded.params), jax.tree.leaves(result.lm.params)))
    assert same == (1000 * (run - 1) == best)  # The best run's file equals NAME.npz's model.
  with pytest.raises(UserError, match="--keep all needs -w"):
    learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=1), configs.EvalConfig().resolved(),
                learn.LearnConfig(keep="all"), names=NAMES, log=_quiet)


def test_probe_is_reported_beside_the_fine_tune_and_saved(tiny_lm, tiny_examples, tmp_path):
  _, tr, va = tiny_examples
  logs = []
  result = learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=1, batch_size=2),
                       configs.EvalConfig().resolved(), learn.LearnConfig(probe=True),
                       names=NAMES, save_to=str(tmp_path / "x.npz"), log=logs.append)
  text = "\n".join(logs)
  assert text.index("Result: valid (1st trained)") < text.index("Result: valid (probe)")
  assert set(result.probe) == set(NAMES) and "fine-tune vs probe on valid: accuracy " in text
  fitted = probe.load(tmp_path / "x.probe.npz")
  assert fitted.weights_id == tiny_lm.spec.weights_id  # The encoder before training.
  logs = []
  only = learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=1, batch_size=2),
                     configs.EvalConfig().resolved(), learn.LearnConfig(probe_only=True),
                     names=NAMES, save_to=str(tmp_path / "y.npz"), log=logs.append)
  assert not only.after and not any("training stage" in l or "before training" in l
                                    for l in logs)
  np.testing.assert_array_equal(only.probe["valid"].p_yes, result.probe["valid"].p_yes)
  assert (tmp_path / "y.probe.npz").is_file() and not (tmp_path / "y.npz").exists()


def test_train_file_continues_a_delta_records_its_parent_and_finds_a_moved_base(
    tiny_lm, tiny_examples, tmp_path):
  """15-train.py's library call; the delta's base found in another cache/ (container -> host)."""
  _, tr, _ = tiny_examples
  cache = tmp_path / "cache"
  cache.mkdir()
  shutil.copyfile(tiny_lm.spec.weights, cache / "tiny.npz")
  spec = loader.ModelSpec(tiny_lm.cfg, str(cache / "tiny.npz"), tiny_lm.spec.tokenizer, "tiny",
                          cache_dir=str(cache))
  ecfg = configs.EvalConfig().resolved()
  first, second = tmp_path / "ck" / "first.npz", tmp_path / "ck" / "second.npz"
  learn.train_file(loader.load(spec, trainable="llm"), tr,
                   train.TrainConfig(steps=2, batch_size=2, trainable="llm"), ecfg, str(first),
                   log=_quiet)
  meta = checkpoint.read_meta(first)
  assert meta["base_in_cache"] == "tiny.npz" and "parent" not in meta
  parent = loader.load(loader.resolve(str(first), cache_dir=str(cache)), trainable="attn")
  trained = learn.train_file(parent, tr, train.TrainConfig(steps=2, batch_size=2, lr=0.1), ecfg,
                             str(second), parent=str(first), log=_quiet)
  meta = checkpoint.read_meta(second)
  assert meta["parent"] == {"path": str(first), "sha256": checkpoint.files.sha256(first)}
  # Trained attn only, but the parent's MLP leaves are kept: the delta is complete.
  assert set(checkpoint.param_names(first)) <= set(checkpoint.param_names(second))
  assert any("mlp" in n for n in checkpoint.param_names(second))
  host = tmp_path / "host-cache"
  (cache / "tiny.npz").rename(tmp_path / "elsewhere.npz")
  host.mkdir()
  shutil.copyfile(tmp_path / "elsewhere.npz", host / "tiny.npz")
  with pytest.raises(UserError, match="missing"):
    loader.resolve(str(second), cache_dir=str(tmp_path / "empty"))
  again = loader.load(loader.resolve(str(second), cache_dir=str(host)), trainable="attn")
  for name, leaf in params_lib.flatten(trained.params).items():
    np.testing.assert_array_equal(np.asarray(leaf),
                                  np.asarray(params_lib.flatten(again.params)[name]), err_msg=name)


def test_replacing_a_checkpoint_is_announced_before_the_work(tmp_path):
  logs = []
  target = tmp_path / "ck" / "x.npz"
  learn._prepare_save(str(target), logs.append)
  assert logs == []  # Nothing there yet.
  checkpoint.write_npz(str(target), [], {"saved": "2026-11-27T14:00:00+00:00"})
  (target.parent / f".x.npz.{2**22 + 7}.abc.tmp").write_bytes(b"half")  # a killed save's
  learn._prepare_save(str(target), logs.append)
  assert logs[0].startswith("removed .x.npz.")
  assert logs[1] == f"warning: {target} (saved 2026-11-27 14:00:00) exists and will be replaced when this run saves"
  target.write_bytes(b"not a checkpoint")
  learn._prepare_save(str(target), logs.append)
  assert logs[-1].startswith("warning: ") and "(saved" not in logs[-1]


def test_eval_every_logs_the_valid_metric_and_keeps_the_best_step(tiny_lm, tiny_examples,
                                                                  tmp_path):
  from palijudge.experiments import records
  _, tr, va = tiny_examples
  rec = records.RunRecord(tmp_path / "exp", "r")
  logs = []
  res = learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=4, batch_size=2, lr=0.3),
                    configs.EvalConfig().resolved(), learn.LearnConfig(eval_every=2, select="auc"),
                    names=NAMES, record=rec, save_to=str(tmp_path / "m.npz"), log=logs.append)
  valid = [(r["step"], r["valid"]) for r in rec.steps() if r["valid"] is not None]
  assert [s for s, _ in valid] == [2, 4] and all(r["stage"] == "stage 1" for r in rec.steps())
  best_step, best = max(valid, key=lambda sv: (sv[1], -sv[0]))  # The first of equals.
  assert f"keeping the state of step {int(best_step)}, where valid auc was best " \
         f"({best:.4f})" in logs
  # The kept state is what was evaluated after training and saved.
  assert learn.selection_score(res.after["valid"], "auc") == pytest.approx(best, abs=1e-5)
  assert any("loss" in p.name for p in rec.plots())  # The curve with the valid points.
  with pytest.raises(UserError, match="--patience counts evaluations"):
    learn.LearnConfig(patience=2)


def test_a_run_answering_one_thing_says_so_with_the_data_s_balance(tiny_lm, tiny_examples,
                                                                   tmp_path):
  """At a threshold near 0 every answer is yes: the warning quotes the valid set's share."""
  from palijudge.experiments import records
  _, tr, va = tiny_examples
  rec = records.RunRecord(tmp_path / "exp", "r")
  logs = []
  learn.learn(tiny_lm, tr, va, train.TrainConfig(steps=1, batch_size=2),
              configs.EvalConfig(threshold=1e-9).resolved(), names=NAMES, record=rec,
              log=logs.append)
  share = sum(e.label for e in va) / len(va)
  warned = [l for l in logs if l.startswith("warning: 1st trained on valid: every prediction "
                                            "was 'yes'")]
  assert len(warned) == 1, logs
  assert f"valid is {100 * share:.0f} % yes, and answering yes to everything scores accuracy " \
         f"{share:.2f}" in warned[0]
  after = rec.eval_metrics()["1st trained"]  # The last stage run (no -2).
  assert after["valid"]["constant_answer"] == "yes"
  # 15-train.py, which has no valid set, judges a sample of its training data.
  learn.train_file(tiny_lm, tr, train.TrainConfig(steps=1, batch_size=2),
                        configs.EvalConfig(threshold=1e-9).resolved(),
                        str(tmp_path / "t.npz"), log=logs.append)
  n_yes = sum(e.label for e in tr)
  assert f"the training data is {100 * n_yes / len(tr):.0f} % yes" in logs[-1]
  assert logs[-1].startswith(f"warning: on {min(len(tr), 64)} of its training examples, ")
