"""palijudge.experiments.leaderboard: rows from run records and a study, markdown, HTML,
history plot, and 07-report.py."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from testing import PLAY

from palijudge.errors import UserError
from palijudge.experiments import cv, records, tune
from palijudge.experiments import leaderboard as report
from palijudge.experiments.records import RunRecord
from palijudge.files import Project


def _metrics(f1: float, auc: float) -> dict:
  return {"tp": 5, "tn": 3, "fp": 1, "fn": 1, "accuracy": 0.8, "precision": 0.83,
          "recall": 0.83, "f_measure": f1, "auc": auc, "precision_ci": [0.44, 0.97],
          "auc_ci": [0.5, 1.0]}


@pytest.fixture
def experiments(tmp_path) -> Path:
  root = tmp_path / "experiments"
  run = RunRecord(root, "plain-run")
  loss = {"kind": "focal", "focal_gamma": 2.0}
  run.write_config({"model": "tiny", "dataset": "dataset/set1",
                    "train_config": {"lr": 0.01, "batch_size": 4, "steps": 64, "loss": loss}})
  with run.running():
    pass
  run.write_eval("before training", {"train": _metrics(0.1, 0.5), "valid": _metrics(0.2, 0.5)})
  run.write_eval("1st trained", {"train": _metrics(0.99, 1.0), "valid": _metrics(0.7, 0.9)})
  run.log_step(1, 0.01, 1.0, 2.0, 0.1)
  run.log_step(2, 0.01, 0.5, 1.0, 0.2)
  cvrun = RunRecord(root, "cv-<b>run</b>")  # a name that needs escaping
  cvrun.write_config({"lr": 0.03, "loss": "combined", "bce_weight": 0.2, "focal_weight": 0.8,
                     "trainable": "<attn>", "optimizer": "sgd", "cv": "cv5", "model": "tiny"})
  cvrun.write_eval("cv", cv.summarize([_metrics(0.8, 0.95), _metrics(0.9, 0.85)]).to_dict())
  cvrun.write_summary("# cv run\n")
  (root / "not-a-run").mkdir()
  study = tune.open_study(str(root / "study.db"), "s1", seed=0)
  space = tune.load_space()
  target = tune.Target("tiny", "cv5")
  tune.run_trials(study, space, lambda cfg, rep: 0.75, 1, records_root=str(root),
                  target=target, log=lambda s: None)
  def fail(cfg, rep):
    raise MemoryError("RESOURCE_EXHAUSTED: out of memory")
  tune.run_trials(study, space, fail, 1, records_root=str(root), target=target,
                  log=lambda s: None)
  tune.ask(study, space, target=target)  # a trial only in the database, still running
  interrupted = RunRecord(root, "stopped")  # Ctrl-C before any evaluation
  interrupted.write_config({"model": "tiny", "dataset": "dataset/set1"})
  with pytest.raises(KeyboardInterrupt), interrupted.running():
    raise KeyboardInterrupt
  return root


def test_rows(experiments):
  rows = {r.name: r for r in report.collect(experiments)}
  assert set(rows) == {"plain-run", "cv--b-run-b", "s1-trial-000", "s1-trial-001", "stopped"}
  plain = rows["plain-run"]
  assert (plain.state, plain.model, plain.evaluated_on) == ("finished", "tiny",
                                                            "dataset/set1 valid")
  assert rows["stopped"].state == "interrupted"
  assert {rows[n].evaluated_on for n in ("cv--b-run-b", "s1-trial-000")} == {"cv5 (CV)"}
  assert plain.kind == "run" and plain.metrics["score"] == 0.7 and plain.metrics["auc"] == 0.9
  assert plain.settings == {"lr": 0.01, "steps": 64, "batch": 4, "loss": "focal",
                            "focal_gamma": 2.0}
  assert [k for k, _ in plain.plots] == ["loss"]  # drawn from train_log.csv
  c = rows["cv--b-run-b"]
  assert c.kind == "cv" and c.metrics["score"] == pytest.approx(0.85)
  # The sample std (ddof=1) of the folds 0.8 and 0.9, the one the t interval is made from.
  assert c.metrics["std"] == pytest.approx(0.05 * 2 ** 0.5) and c.metrics["auc"] == pytest.approx(0.9)
  assert c.link == "cv--b-run-b/summary.md"
  t0, t1 = rows["s1-trial-000"], rows["s1-trial-001"]
  assert (t0.kind, t0.state, t0.metrics["score"]) == ("trial", "COMPLETE", 0.75)
  assert t0.settings["loss"] == "combined" and t0.settings["focal_alpha"] == 1.0
  assert t1.state == "FAIL" and "RESOURCE_EXHAUSTED" in t1.note


def test_html_links_the_tensorboard_events(experiments):
  built = report.build(experiments)
  page = built.html.read_text()
  events = sorted((experiments / "plain-run").glob("events.out.tfevents.*"))
  assert len(events) == 1
  assert f'<a href="plain-run/{events[0].name}" title="TensorBoard event file">tensorboard</a>' \
      in page and "tensorboard --logdir experiments" in page


def test_build_markdown_html_history(experiments):
  built = report.build(experiments)
  assert built.rows == 6 and [h.name for h in built.histories] == ["study_history_s1.png"]
  md = built.markdown.read_text()
  # One table per evaluation set: runs measured on different sets are never ranked together.
  assert re.findall(r"^## Evaluated on (.*)$", md, re.M) == [
      "cv5 (CV)", "dataset/set1 (not evaluated)", "dataset/set1 valid"]
  lines = [l for l in md.splitlines()
           if l.startswith("| ") and not l.startswith(("|  | run", "| --- "))]
  assert [re.search(r"\[?([\w-]+)", l.split("|")[2]).group(1) for l in lines] == [
      "cv--b-run-b", "s1-trial-000", "s1-trial-001", "s1-trial-002", "stopped", "plain-run"]
  assert lines[0].startswith("| ★ | [cv--b-run-b](cv--b-run-b/summary.md) | cv |")
  assert "0.8500 ± 0.0707 [0.21, 1.00]" in lines[0] and "[loss](plain-run/loss.png)" in md
  plain = next(l for l in lines if "plain-run" in l)
  assert plain.startswith("| ★ | [plain-run](plain-run/) | run | finished | tiny |")
  # The score column names its metric (F1), so F1 is not shown twice.
  assert "| score (F1) | precision | recall | AUC | accuracy | vs ★ | plots |" in md
  assert "| 0.7000 | 0.8300 [0.44, 0.97] | 0.8300 | 0.9000 [0.50, 1.00] | 0.8000 |" in plain
  assert "| interrupted |" in next(l for l in lines if "stopped" in l)
  # Settings equal in every row of a group are said once, not repeated in a column.
  assert "Same in every row: lr 0.01, steps 64, batch 4, loss focal, gamma 2." in md
  assert "![study history](study_history_s1.png)" in md
  page = built.html.read_text()
  assert page.count("<tr class=") == 6 and "<script>" in page and "cv--b-run-b" in page
  assert page.count("<table>") == 3 and "<br><small>[0.44, 0.97]</small>" in page
  assert _widest_table_px(page) <= 1366
  assert "<b>" not in page.replace("<body>", "") and "&lt;attn&gt;" in page
  assert 'class="best"' in page and 'src="study_history_s1.png"' in page
  assert built.histories[0].read_bytes()[:4] == b"\x89PNG"


def _widest_table_px(page: str) -> int:
  """A conservative width of the widest table: per column, its longest unbreakable line at
  7 px a character (12 px sans-serif is narrower), plus padding and borders."""
  widest = 0
  for table in re.findall(r"<table>(.*?)</table>", page, re.S):
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    cells = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S) for r in rows]
    width = 0
    for col in zip(*cells):
      longest = 0
      for cell in col:
        wraps = 'class=t' in cell  # name and plots cells wrap at spaces, 16em at most
        for part in re.split(r"<br>", cell):
          text = re.sub(r"<[^>]+>", "", part)
          longest = max(longest, max(map(len, text.split())) if wraps and text.split()
                        else len(text))
      width += min(longest * 7, 16 * 12) + 12
    widest = max(widest, width)
  return widest


def test_sort_keys(experiments):
  rows = report.collect(experiments, render_plots=False)
  by_lr = [r.settings["lr"] for r in report.sort_rows(rows, "lr") if "lr" in r.settings]
  assert by_lr == sorted(by_lr) and len(by_lr) == 4
  assert next(r.name for r in report.sort_rows(rows, "name")) == "cv--b-run-b"
  md = report.markdown(rows, "auc")  # each group sorted on its own
  assert md.index("s1-trial-000") < md.index("s1-trial-001") < md.index("plain-run")
  assert report.best_of(rows, "auc").name in ("plain-run", "cv--b-run-b")
  with pytest.raises(UserError, match="--sort must be one of"):
    report.build(experiments, sort="speed")
  assert not (experiments / "leaderboard.md").exists()


def test_missing_folder(tmp_path):
  with pytest.raises(UserError, match="no experiments folder"):
    report.build(tmp_path / "nope")


def test_report_script(experiments, monkeypatch, capsys):
  monkeypatch.syspath_prepend(str(PLAY))  # Where the script's `import _env` is found.
  spec = importlib.util.spec_from_file_location("report07", PLAY / "07-report.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  from palijudge import cli
  args, _ = cli.parse(mod.Config, ["--experiments", str(experiments), "--sort", "recall",
                                   "--no-plots"])
  mod.main(args, Project.at(experiments.parent))
  out = capsys.readouterr().out
  assert "6 row(s)" in out and "study_history_s1.png" in out
  assert not (experiments / "plain-run" / records.PLOTS["loss"]).exists()


# --- Settings that differ, the score's metric, constant answers, the noise ------------


def _run(root, name, *, f1=0.7, tc=None, args=None, metric=None, preds=None, block=None):
  """A finished 03 run record on dataset/set1 with a valid block and, given, predictions."""
  rec = RunRecord(root, name)
  cfg = {"model": "tiny", "dataset": "dataset/set1", "checkpoint": f"checkpoints/{name}.npz",
         "train_config": {"lr": 0.03, "steps": 8, "optimizer": "sgd", "lora_rank": 16,
                          "loss": {"kind": "ce"}, **(tc or {})},
         "args": {"two_stage": False, "prompt": "Is this OK?", "write": name, **(args or {})},
         "final_stage": "1st trained", **({"metric": metric} if metric else {})}
  rec.write_config(cfg)
  with rec.running():
    rec.write_eval("before training", {"valid.jsonl": _metrics(0.1, 0.5)})
    rec.write_eval("1st trained", {"valid.jsonl": block or _metrics(f1, 0.9)})
    if preds is not None:
      rec.write_predictions(preds)
  return rec


def _preds(labels, answers, images=None):
  images = images or [f"img/{i}.png" for i in range(len(labels))]
  return [{"image": im, "label": "yes" if y else "no", "p_yes": 0.9 if a else 0.1,
           "pred": "yes" if a else "no"} for im, y, a in zip(images, labels, answers)]


def test_every_setting_that_differs_between_rows_is_a_column(tmp_path):
  root = tmp_path / "experiments"
  _run(root, "a")
  _run(root, "b", tc={"optimizer": "adam"})
  _run(root, "c", args={"two_stage": True})
  _run(root, "d", tc={"lora_rank": 4}, args={"prompt": "A much longer prompt: is this ad OK?"})
  md = report.markdown(report.collect(root, render_plots=False))
  head = next(l for l in md.splitlines() if l.startswith("|  | run"))
  cols = [c.strip() for c in head.split("|")]
  assert {"-2", "optimizer", "lora_rank", "prompt"} <= set(cols), head
  assert "Same in every row: lr 0.03, steps 8, loss ce." in md  # Not the ones that differ.
  row = {re.match(r"\[(\w+)\]", l.split("|")[2].strip()).group(1): [c.strip() for c in l.split("|")]
         for l in md.splitlines() if l.startswith("| ") and "](" in l}
  at = lambda name, col: row[name][cols.index(col)]
  assert (at("b", "optimizer"), at("a", "optimizer")) == ("adam", "sgd")
  assert (at("c", "-2"), at("a", "-2")) == ("True", "False")
  # A long text setting: a code in the cell, the text said under the table.
  assert at("d", "prompt") == "#2" and at("a", "prompt") == "#1"
  assert "prompt: #1 = Is this OK?; #2 = A much longer prompt: is this ad OK?" in md
  assert "| score (F1) |" in head


def test_the_score_column_names_its_metric(tmp_path):
  root = tmp_path / "experiments"
  _run(root, "f", f1=0.7)
  _run(root, "u", metric="auc")
  md = report.markdown(report.collect(root, render_plots=False))
  head = next(l for l in md.splitlines() if l.startswith("|  | run"))
  assert "| score |" in head and "| F1 |" in head  # Mixed metrics: each cell names its own.
  assert "| F1 0.7000 |" in md and "| AUC 0.9000 [0.50, 1.00] |" in md


def test_a_run_that_learned_nothing_says_so(tmp_path):
  """Every valid prediction one answer: flagged (from its counts, or from its stored
  predictions when the record has no counts) and never the marked best, whatever its score."""
  root = tmp_path / "experiments"
  always_yes = {"tp": 8, "fp": 2, "tn": 0, "fn": 0, "f_measure": 0.89, "auc": 0.5,
                "precision": 0.8, "recall": 1.0, "accuracy": 0.8}
  _run(root, "lazy", block=always_yes)
  _run(root, "real", f1=0.7)
  no_counts = {"f_measure": 0.0, "accuracy": 0.2}
  _run(root, "silent", block=no_counts, preds=_preds([True] * 8 + [False] * 2, [False] * 10))
  rows = {r.name: r for r in report.collect(root, render_plots=False)}
  assert (rows["lazy"].constant, rows["silent"].constant, rows["real"].constant) == (
      "yes", "no", "")
  assert report.best_of(list(rows.values())).name == "real"
  md = report.markdown(list(rows.values()))
  assert "| finished, always yes! |" in next(l for l in md.splitlines() if "[lazy]" in l)
  assert "| ★ | [real]" in md
  page = report.html_page(list(rows.values()))
  assert 'class="finished constant"' in page and "always no!" in page


def test_a_difference_from_the_best_inside_the_noise_is_marked(tmp_path):
  """vs ★: 17-compare.py's paired test on the stored predictions, paired by example."""
  root = tmp_path / "experiments"
  labels = [True] * 20 + [False] * 20
  _run(root, "best", f1=0.95, preds=_preds(labels, labels))
  one_flip = labels[:-1] + [True]  # One example of 40 judged otherwise.
  _run(root, "close", f1=0.93, preds=_preds(labels, one_flip)[::-1])  # Any order: paired by key.
  _run(root, "far", f1=0.5, preds=_preds(labels, [not y for y in labels]))
  _run(root, "elsewhere", f1=0.4, preds=_preds(labels, labels, [f"x/{i}.png" for i in range(40)]))
  _run(root, "unsaved", f1=0.3)
  md = report.markdown(report.collect(root, render_plots=False))
  lines = md.splitlines()
  head = [c.strip() for c in next(l for l in lines if l.startswith("|  | run")).split("|")]
  at = head.index("vs ★")
  mark = {n: next(l for l in lines if f"[{n}]" in l).split("|")[at].strip()
          for n in ("best", "close", "far", "elsewhere", "unsaved")}
  assert mark == {"best": "", "close": "noise", "far": "beyond", "elsewhere": "n/a",
                  "unsaved": ""}
  assert "17-compare.py's paired test" in md
