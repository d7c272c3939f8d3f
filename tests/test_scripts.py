"""The numbered scripts end to end, as a user runs them, and their bad input.

Workflow scripts (01-04, 00-params) run in a subprocess exactly as a user
runs them; the evaluation scripts (04, 05, 13, 14, 16) run in this process
(runpy) to stay fast, as `python SCRIPT` runs them.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from palijudge import configs
from palijudge import checkpoint, loader
from palijudge.evaluation import scoring
from palijudge.params import flatten
from palijudge.data import examples as data
from palijudge.data import synthetic
from palijudge.files import Project
from testing import PLAY, ROOT, assert_one_line_error, in_process, run_script

pytestmark = pytest.mark.script


def run(script: str, *args, cwd, check=True) -> subprocess.CompletedProcess:
  return run_script(script, *args, project=Project.at(cwd), cwd=cwd, check=check)


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
  assert "ex/s" not in proc.stderr  # --progress auto: no bars when stderr is not a terminal


def test_split_shell_wrapper_passes_flags(project):
  proc = subprocess.run(["bash", str(PLAY / "02-shuffle_data.sh"), "--project", str(project), "-v", "4", "-n", "sh",
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


# --- The evaluation scripts, in process ---------------------------------------

@pytest.fixture(scope="module")
def eval_project(tmp_path_factory):
  root = tmp_path_factory.mktemp("proj")
  loader.write_random_model("tiny", str(root / "cache"), seed=0)
  path = synthetic.make_dataset(root / "dataset", n=16, seed=4, yes_fraction=0.75)
  data.write_examples(root / "dataset" / "data.tsv", data.read_examples(path))
  return root


@pytest.fixture
def script(eval_project, monkeypatch, capsys):
  return in_process(eval_project, monkeypatch, capsys)


def one_line_error(result, *needles):
  code, _, err = result
  lines = [l for l in err.strip().splitlines() if "%|" not in l]  # tqdm lines aside.
  assert code == 2 and len(lines) == 1 and "Traceback" not in err, result
  for n in needles:
    assert n in lines[0], (n, lines[0])


def test_infer_aggregate_filter_validate(script, eval_project):
  code, out, err = script("13-inference.py", "--model", "tiny", "-d", "dataset/data.tsv",
                          "-b", "4", "-o", "out/full.tsv")
  assert code == 0 and "wrote out/full.tsv: 16 rows" in out, err
  rows = (eval_project / "out/full.tsv").read_text().splitlines()
  assert rows[0] == "id\timage\tlabel\tp_yes\tpred\tprefix" and len(rows) == 17
  code, out, _ = script("14-validate_outtsv.py", "out/full.tsv", "--threshold", "0.2", "--json")
  assert code == 0 and out.startswith("Aggregate: out/full.tsv\n  Tp=") and "  ROC-AUC:" in out
  assert "\n  95% interval: accuracy [" in out and "roc_auc_ci" in out.splitlines()[-1]
  assert json.loads(out.splitlines()[-1])["threshold"] == 0.2
  code, _, err = script("16-filter_train_data.py", "out/full.tsv", "--keep", "not-tp",
                        "--threshold", "0.2", "-o", "dataset/next.tsv")
  assert code == 0 and "kept " in err
  code, out, _ = script("04-validate.py", "--model", "tiny", "dataset/next.tsv", "--root",
                        "dataset", "--eval-set", "all=dataset/data.jsonl", "--pick-threshold",
                        "all", "--target", "recall=0.9", "--gallery", "gal", "--scores", "s.tsv")
  assert code == 0 and "picked on all for --target recall=0.9" in out
  assert "Result: dataset/next.tsv\n" in out and "Result: all\n" in out
  assert len(list((eval_project / "gal").glob("*.html"))) == 2
  assert (eval_project / "s.tsv").read_text().startswith("id\timage\tlabel\tp_yes\tpred")


def test_train_from_a_file_with_the_original_flags(script, eval_project):
  """15-train.py: -d (a TSV, then a suffixless `split` piece) -i -b -r -t -s, and -l to continue."""
  rows = (eval_project / "dataset/data.tsv").read_text().splitlines()
  (eval_project / "xaa").write_text("\n".join(rows[:7]) + "\n")  # header + 6 rows, no suffix
  code, out, err = script("15-train.py", "--model", "tiny", "-d", "xaa", "-i", "dataset",
                          "-b", "2", "-r", "0.01", "-t", "2", "-s", "ck/a.npz", "--print-every", "1")
  assert code == 0, err
  assert "training on 6 examples: lr 0.01, batch 2, 6 steps" in out  # ceil(6/2) x 2
  assert "step:  6/ 6   lr: " in out and "saved ck/a.npz" in out
  meta = checkpoint.read_meta(eval_project / "ck/a.npz")
  assert meta["train_config"]["lr"] == 0.01 and "parent" not in meta
  # Recorded like every training run, so it reaches the leaderboard.
  from palijudge.experiments import leaderboard, records
  rec = records.RunRecord.load(eval_project / "experiments/a")
  assert "record: experiments/a" in out and rec.status() == "finished"
  assert rec.config()["checkpoint"] == "ck/a.npz" and rec.config()["train_config"]["steps"] == 6
  assert [r["step"] for r in rec.steps()] == [1, 2, 3, 4, 5, 6] and "loss" in rec.plot_files()
  assert "- **status**: finished" in rec.summary()
  assert "a" in {r.name for r in leaderboard.collect(eval_project / "experiments")}
  code, out, err = script("15-train.py", "--model", "tiny", "-d", "dataset/data.tsv", "-l",
                          "ck/a.npz", "-s", "ck/b.npz", "--steps", "2", "-b", "4")
  assert code == 0 and "16 examples" in out and "2 steps" in out, err
  parent = checkpoint.read_meta(eval_project / "ck/b.npz")["parent"]
  assert parent["path"] == str(eval_project / "ck/a.npz")
  code, out, err = script("13-inference.py", "-l", "ck/b.npz", "-d", "xaa", "-i", "dataset")
  assert code == 0 and len(out.splitlines()) == 7, err
  one_line_error(script("15-train.py", "--model", "tiny", "-d", "xaa", "-i", "dataset",
                        "-s", "ck/c.npz", "-t", "0"), "-t/--repeat must be >= 1")
  one_line_error(script("15-train.py", "--model", "tiny", "-d", "xaa", "-i", "dataset",
                        "-s", "ck/c.txt"), "must end in .npz")
  assert not (eval_project / "ck/c.npz").exists()


def test_validate_uses_the_checkpoint_threshold(script, eval_project):
  spec = loader.resolve("tiny", cache_dir=str(eval_project / "cache"))
  lm = loader.load(spec)
  checkpoint.save(eval_project / "ck.npz", lm.params, lm.cfg,
                  {"tokenizer": spec.tokenizer, "threshold": 0.25})
  code, out, err = script("04-validate.py", "-m", "ck.npz", "dataset/data.jsonl")
  assert code == 0 and "  threshold: 0.25\n" in out, err
  code, out, _ = script("04-validate.py", "-m", "ck.npz", "dataset/data.jsonl",
                        "--threshold", "0.5")
  assert "  threshold: 0.5\n" in out


def _assert_no_difference(out: str) -> None:
  """The verdict of two models one flip apart at most: nothing detectable, and a metric that
  one of them leaves undefined (the tiny model may never say yes) said to be so."""
  verdict = out.rstrip("\n").splitlines()[-1]
  assert verdict.startswith("No difference detectable on 16 examples")
  never = [side for side in "AB" if re.search(
      rf"Result: [^\n]* \({side}\)\n  Tp=0 Tn=\d+ Fp=0 ", out)]
  if never:
    assert verdict.endswith(f"; precision cannot be compared ("
                            f"{', '.join(f'{x} never says yes' for x in never)}).")
    assert "B - A undefined (" in out
  else:
    assert verdict == "No difference detectable on 16 examples."


def test_compare_two_models_on_the_same_examples(script, eval_project):
  """17-compare.py: checkpoints or prediction files, the flips, McNemar, and the verdict."""
  import shutil
  spec = loader.resolve("tiny", cache_dir=str(eval_project / "cache"))
  lm = loader.load(spec)
  checkpoint.save(eval_project / "same1.npz", lm.params, lm.cfg, {"tokenizer": spec.tokenizer})
  shutil.copyfile(eval_project / "same1.npz", eval_project / "same2.npz")
  code, out, err = script("17-compare.py", "-a", "same1.npz", "-b", "same2.npz",
                          "dataset/data.jsonl", "--eval-batch", "8")
  assert code == 0, err
  assert "Result: dataset/data.jsonl (A)\n  Tp=" in out and "Result: dataset/data.jsonl (B)" in out
  assert "Disagreements: 0 of 16 examples\n" in out and "p = 1.0000" in out
  _assert_no_difference(out)
  # Prediction files: B judges one `no` image yes; both are read back and matched by image.
  code, _, err = script("04-validate.py", "-m", "same1.npz", "dataset/data.jsonl",
                        "--scores", "pa.tsv")
  assert code == 0, err
  rows = (eval_project / "pa.tsv").read_text().splitlines()
  i = next(k for k, r in enumerate(rows) if r.split("\t")[2] == "no")
  cells = rows[i].split("\t")
  flipped = cells[:4] + ["yes" if cells[4] == "no" else "no"] + cells[5:]
  (eval_project / "pb.tsv").write_text("\n".join(rows[:i] + ["\t".join(flipped)]
                                                + rows[i + 1:]) + "\n")
  code, out, err = script("17-compare.py", "-a", "pa.tsv", "-b", "pb.tsv", "dataset/data.jsonl")
  assert code == 0, err
  side = "A right, B wrong: 1" if cells[4] == "no" else "B right, A wrong: 1"
  assert "Disagreements: 1 of 16 examples" in out and side in out
  assert f"    {cells[1]} (no): A {cells[4]}" in out
  _assert_no_difference(out)
  (eval_project / "pc.tsv").write_text("\n".join(rows[:-1]) + "\n")  # One row short.
  one_line_error(script("17-compare.py", "-a", "pa.tsv", "-b", "pc.tsv"),
                 "all rows: A and B were not judged on the same examples (1 only in A")
  one_line_error(script("17-compare.py", "-a", "pa.tsv", "-b", "pc.tsv", "dataset/data.jsonl"),
                 "pc.tsv: no row for 1 example(s) of dataset/data.jsonl")
  one_line_error(script("17-compare.py", "-a", "same1.npz", "-b", "pa.tsv"),
                 "-a same1.npz: a model needs one or more datasets")
  one_line_error(script("17-compare.py", "-a", "same1.txt", "-b", "pa.tsv"),
                 "expected a checkpoint .npz, base, or a prediction file")


def test_rank_prompts(script, eval_project):
  (eval_project / "prompts.txt").write_text("# candidates\nIs this ad lawful?\n")
  code, out, err = script("05-rank_prompts.py", "--model", "tiny", "dataset/data.jsonl",
                          "--prompt", "Is this image appropriate based on FTC Act?",
                          "--prompts", "prompts.txt", "--metric", "f1")
  assert code == 0, err
  lines = out.splitlines()
  assert lines[0].startswith("16 examples, 2 prompts") and lines[1].startswith("rank")
  assert {l.split("  ")[-1] for l in lines[2:]} == {
      "Is this ad lawful?", "Is this image appropriate based on FTC Act?"}


def _misranked_pair(project) -> str:
  """dataset/pair.jsonl: a `no` scored above a `yes`, so no threshold gives precision 0.9."""
  lm = loader.load(loader.resolve("tiny", cache_dir=str(project / "cache")))
  exs = data.read_examples(project / "dataset/data.jsonl")
  p = scoring.evaluate(lm, exs, configs.EvalConfig().resolved()).p_yes
  no = max((i for i, e in enumerate(exs) if not e.label), key=lambda i: p[i])
  yes = min((i for i, e in enumerate(exs) if e.label), key=lambda i: p[i])
  assert p[no] > p[yes]
  data.write_examples(project / "dataset/pair.jsonl", [exs[no], exs[yes]])
  return "dataset/pair.jsonl"


def test_bad_input_is_one_line(script, eval_project):
  (eval_project / "empty.txt").write_text("# nothing\n\n")
  one_line_error(script("05-rank_prompts.py", "--model", "tiny", "dataset/data.jsonl",
                        "--prompts", "empty.txt"), "empty.txt: no prompts")
  (eval_project / "nopred.tsv").write_text("image\tlabel\nimages/x.png\tyes\n")
  one_line_error(script("14-validate_outtsv.py", "nopred.tsv"),
                 "nopred.tsv: a dataset, not predictions (no pred column)", "13-inference.py")
  one_line_error(script("04-validate.py", "--model", "tiny", "dataset/data.jsonl",
                        "--threshold", "0.3", "--pick-threshold", "data"), "contradict")
  one_line_error(script("04-validate.py", "--model", "tiny", "dataset/data.jsonl",
                        "--threshold", "1.5"), "--threshold must be in (0, 1)")
  one_line_error(script("04-validate.py", "--model", "tiny", _misranked_pair(eval_project),
                        "--pick-threshold", "pair", "--target", "precision=0.9"),
                 "cannot be reached on dataset/pair.jsonl", "the best precision is 0.5000")
  one_line_error(script("16-filter_train_data.py", "dataset/data.jsonl", "--keep", "fp"),
                 "data.jsonl: a dataset, not predictions", "13-inference.py -l CKPT -d")
  (eval_project / "odd.tsv").write_text("image\tpred\nimages/x.png\tyes\n")
  one_line_error(script("16-filter_train_data.py", "odd.tsv"), "missing column(s) label")
  one_line_error(script("13-inference.py", "--model", "tiny", "-d", "dataset/data.csv"),
                 "expected .jsonl or .tsv")
  assert not (eval_project / "out/x.tsv").exists()


def _block(out: str, heading: str) -> list[str]:
  """The Result block headed `heading`: its heading and the five lines under it."""
  lines = out.splitlines()
  i = lines.index(heading)
  return lines[i:i + 6]


@pytest.fixture(scope="module")
def probe_split(eval_project):
  """dataset/pr/{train,valid}.jsonl: 10 and 6 of the eval project's 16 images, stratified."""
  from palijudge.data import splits
  rows = data.read_examples(eval_project / "dataset/data.jsonl")
  train, valid = splits.split(rows, 6, 0, stratify=True)
  data.write_jsonl(eval_project / "dataset/pr/train.jsonl", train)
  data.write_jsonl(eval_project / "dataset/pr/valid.jsonl", valid)
  return "dataset/pr/valid.jsonl"


def test_probe_only_then_validate_and_infer_with_the_probe(script, eval_project, probe_split):
  code, out, err = script("03-do_learn.py", "-d", "pr", "-w", "pr", "--model", "tiny",
                          "--probe-only")
  assert code == 0, err
  assert "linear probe: logistic regression on 64-d frozen image embeddings" in out
  assert "step:" not in out and "(before training)" not in out
  fitted = _block(out, f"Result: {probe_split} (probe)")
  assert "saved checkpoints/pr.probe.npz" in out
  code, out, err = script("04-validate.py", "-m", "checkpoints/pr.probe.npz", probe_split)
  assert code == 0, err
  assert _block(out, f"Result: {probe_split}")[1:] == fitted[1:]  # Same numbers from the file.
  code, out, err = script("13-inference.py", "-l", "checkpoints/pr.probe.npz", "-d", probe_split,
                          "-i", "dataset", "-o", "out/probe.tsv")
  assert code == 0 and "wrote out/probe.tsv: 6 rows" in out, err


def test_a_hostile_probe_file_is_one_line(script, eval_project, probe_split):
  meta = json.dumps({"kind": "linear-probe", "dim": 2, "C": 1.0, "folds": 0, "weights_id": "x",
                     "model_config": {}, "encoder": "m.npz", "gif_frame": "first",
                     "n_train": 4}).encode()
  np.savez(eval_project / "evil.npz", **{"params/probe/coef": np.array([None, {}]),
                                         "params/probe/intercept": np.zeros(1),
                                         "palijudge/meta": np.frombuffer(meta, np.uint8)})
  one_line_error(script("04-validate.py", "-m", "evil.npz", probe_split), "evil.npz",
                 "it holds Python objects (pickled data), which are never loaded")
  one_line_error(script("13-inference.py", "-l", "evil.npz", "-d", probe_split, "-i", "dataset"),
                 "evil.npz")


def test_ensembles_in_validate_and_inference(script, eval_project):
  spec = loader.resolve("tiny", cache_dir=str(eval_project / "cache"))
  lm = loader.load(spec)
  for name, t in (("e1.npz", 0.25), ("e2.npz", 0.4)):
    checkpoint.save(eval_project / name, lm.params, lm.cfg,
                    {"tokenizer": spec.tokenizer, "threshold": t})
  outs = [script("04-validate.py", *args, "dataset/data.jsonl")
          for args in (("-m", "e1.npz"), ("-m", "e1.npz,e1.npz", "--ensemble", "min"),
                       ("-m", "e1.npz", "-m", "e1.npz"))]
  assert all(code == 0 for code, _, _ in outs) and "  threshold: 0.25\n" in outs[0][1]
  assert outs[1][1] == outs[0][1] and outs[2][1] == outs[0][1]  # Identical members: the same.
  code, out, err = script("04-validate.py", "-m", "e1.npz", "-m", "e2.npz", "dataset/data.jsonl")
  assert code == 0 and "  threshold: 0.5\n" in out
  assert "store different thresholds (0.25, 0.4); judging at 0.5" in out
  for name, args in (("one", ("-l", "e1.npz")), ("two", ("-l", "e1.npz,e1.npz"))):
    code, out, err = script("13-inference.py", *args, "-d", "dataset/data.tsv", "-o",
                            f"out/{name}.tsv")
    assert code == 0, err
  assert (eval_project / "out/one.tsv").read_text() == (eval_project / "out/two.tsv").read_text()
  one_line_error(script("04-validate.py", "-m", "e1.npz,e2.npz", "--mode", "decode",
                        "dataset/data.jsonl"), "needs --mode score")


def test_learn_with_the_probe_and_every_run_kept(script, eval_project, probe_split):
  code, out, err = script("03-do_learn.py", "-d", "pr", "-w", "k", "--model", "tiny",
                          "--steps", "1", "--batch", "2", "--runs", "2", "--keep", "all",
                          "--probe")
  assert code == 0, err
  tuned = out.index(f"Result: {probe_split} (1st trained)")
  assert tuned < out.index(f"Result: {probe_split} (probe)")
  assert f"fine-tune vs probe on {probe_split}: accuracy " in out
  for name in ("k.npz", "k.run1.npz", "k.run2.npz", "k.probe.npz"):
    assert f"saved checkpoints/{name}" in out
  code, out, err = script("04-validate.py", "-m", "checkpoints/k.run1.npz,checkpoints/k.run2.npz",
                          probe_split)
  assert code == 0 and out.startswith(f"Result: {probe_split}\n"), err


def test_learn_phases_and_export(project, tmp_path):
  """03 --phases times the iteration by phase; 09 writes a complete big_vision file."""
  proc = run("03-do_learn.py", "-d", "set1", "-w", "ph", "--model", "tiny", "--steps", "4",
             "--phases", "--progress", "always", cwd=project)
  # Bars on stderr (count, rate, ETA); stdout keeps its lines.
  bars = proc.stderr.replace("\r", "\n")
  assert re.search(r"train \(stage 1\): .*\d+/4 \[\d\d:\d\d<\d\d:\d\d, .*(step/s|s/step).*ex/s", bars)
  assert re.search(r"valid\.jsonl \(before training\): .*\d+/6 \[", bars)
  assert "it/s" not in proc.stdout and "step/s" not in proc.stdout
  timing = json.loads(proc.stdout.splitlines()[-1])
  assert [p["name"] for p in timing["phases"]] == [
      "checkpoint_load", "before_evaluation", "compilation", "training", "after_evaluation",
      "save"]
  assert "compiling the train step" in proc.stdout and "| total |" in proc.stdout
  delta = project / "checkpoints" / "ph.npz"
  out = tmp_path / "full.npz"
  run("09-export_full.py", "-m", delta, "-o", out, cwd=project)
  full = checkpoint.param_names(out)
  assert len(full) > len(checkpoint.param_names(delta)) and not checkpoint.is_delta(out)
  base = loader.load(loader.resolve(str(delta)))
  with np.load(out) as f:
    for name, leaf in flatten(base.params).items():
      np.testing.assert_array_equal(np.asarray(leaf), f["params/" + name], err_msg=name)
  bad = run("09-export_full.py", "-m", delta, "-o", project / "dataset/data.jsonl/x.npz",
            cwd=project, check=False)
  assert_one_line_error(bad, "data.jsonl")


def test_decisions_are_read_by_the_split_and_the_audit(dup_project):
  """A confirmed pair stays on one side of a split and is a leak across sets; a bad line
  stops both scripts with one line."""
  rows = (dup_project / "dataset/data.jsonl").read_text().splitlines()
  a, b = (json.loads(r)["image"] for r in rows[:2])  # Two different ads.
  decided = dup_project / "dataset" / "audit-decisions.tsv"
  decided.write_text(f"# my decisions\nconfirm\t{a}\t{b}\n")
  try:
    out = run("02-shuffle_data.py", "-v", "20", "-n", "decided", "--seed", "3",
              cwd=dup_project).stdout
    assert "duplicates: 6 group(s) of 12 images kept together (found by sha256 1, pixels 4, " \
           "confirmed 1)" in out
    sides = _sides(dup_project, "decided")
    assert sides[a] == sides[b]
    _write(dup_project / "dataset/pair/train.jsonl", rows[:1])
    _write(dup_project / "dataset/pair/valid.jsonl", rows[1:2])
    leak = run("12-audit.py", "-d", "pair", cwd=dup_project, check=False)
    assert leak.returncode == 1 and "leak across train/valid, found by confirmed" in leak.stdout
    other = dup_project / "other.tsv"
    other.write_text(f"dismiss\t{a}\t{b}\n")  # --decisions names another file.
    assert run("12-audit.py", "-d", "pair", "--decisions", "other.tsv",
               cwd=dup_project).returncode == 0
    decided.write_text(f"keep\t{a}\t{b}\n")
    for script in (("02-shuffle_data.py", "-v", "20", "-n", "decided"),
                   ("12-audit.py", "-d", "pair")):
      assert_one_line_error(run(*script, cwd=dup_project, check=False), "audit-decisions.tsv:1")
  finally:
    decided.unlink()


def test_audit_benchmark_prints_before_and_after(project):
  out = run("12-audit.py", "--benchmark", "--seeds", "0", cwd=project).stdout.splitlines()
  assert out[0] == "templated ads, seeds 0: 87 images (1 x 87)"
  assert "| pairs | planted | before: found | after: duplicate | after: possible " \
         "| after: missed |" in out
  assert "| edit: flip | 3 | 0 | 3 | 0 | 0 |" in out  # The former audit missed every flip.
  assert sum(l.startswith("| edit: ") and l.endswith(" | 0 |") for l in out) == 9  # None missed.
  assert all(" | 0 false | " in l for l in out if l.startswith("| look-alike: "))
  bad = run("12-audit.py", "--benchmark", "--seeds", "x", cwd=project, check=False)
  assert_one_line_error(bad, "--seeds 'x'")


def test_scripts_run_from_playground_with_project_paths(project):
  """As the original scripts were run: from playground/, paths as from the project root."""
  proc = subprocess.run([sys.executable, str(PLAY / "04-validate.py"), "--project", str(project),
                         "--model", "tiny", "dataset/set1/valid.jsonl", "--root", "dataset"],
                        cwd=PLAY, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("Result: ") and "set1/valid.jsonl" in proc.stdout.splitlines()[0]


# --- Duplicates: 02 keeps them together, 12-audit catches a leak -----------------

@pytest.fixture(scope="module")
def dup_project(tmp_path_factory):
  """A project whose data.jsonl holds 40 ads and 5 variants of some of them (copy, resized, ...)."""
  root = tmp_path_factory.mktemp("dups")
  synthetic.make_dataset(root / "dataset", n=40, seed=0, duplicates=5)
  return root


def _sides(project, name) -> dict[str, str]:
  return {json.loads(l)["image"]: side for side in ("train", "valid")
          for l in (project / f"dataset/{name}/{side}.jsonl").read_text().splitlines()}


def test_shuffle_keeps_duplicates_on_one_side(dup_project):
  out = run("02-shuffle_data.py", "-v", "10", "-n", "set1", "--seed", "0", "--stratify",
            cwd=dup_project).stdout
  assert "duplicates: 5 group(s) of 10 images kept together (found by sha256 1, " \
         "pixels 4)" in out
  sides = _sides(dup_project, "set1")
  for image, side in sides.items():
    if "-dup-of-" in image:
      original = next(i for i in sides if i[10:15] == image.split("-dup-of-")[1][:5])
      assert sides[original] == side, image
  out = run("02-shuffle_data.py", "--folds", "3", "-n", "cv3", "--seed", "0", "--stratify",
            cwd=dup_project).stdout
  assert "kept together" in out
  proc = run("12-audit.py", "-d", "cv3", cwd=dup_project)
  assert "checked by sha256, pixels (pHash <= 16 bits, then duplicate: structure <= " in proc.stdout
  assert "0 leak(s) across sets, 5 within a set" in proc.stdout


def test_audit_catches_a_planted_leak(dup_project):
  rows = (dup_project / "dataset/data.jsonl").read_text().splitlines()
  resized = next(r for r in rows if "-resized." in r)
  _write(dup_project / "dataset/leak/train.jsonl", [r for r in rows if r != resized])
  _write(dup_project / "dataset/leak/valid.jsonl", [resized])
  proc = run("12-audit.py", "-d", "leak", "--html", "leak.html", cwd=dup_project, check=False)
  assert proc.returncode == 1, proc.stderr
  assert re.search(r"group \d: 2 images, leak across train/valid, found by pixels\n", proc.stdout)
  assert "1 leak(s) across sets, 4 within a set, 0 label conflict(s)" in proc.stdout
  assert "page: leak.html" in proc.stdout and "-resized." in (dup_project / "leak.html").read_text()
  clean = run("12-audit.py", "clean=dataset/leak/train.jsonl", cwd=dup_project)  # Within one set.
  assert "0 leak(s)" in clean.stdout
  strict = run("12-audit.py", "dataset/leak/train.jsonl", "--strict", cwd=dup_project, check=False)
  assert strict.returncode == 1
  bad = run("12-audit.py", "-d", "leak", "--html", "dataset/data.jsonl/x.html", cwd=dup_project,
            check=False)
  assert_one_line_error(bad, "data.jsonl")


# --- Nothing lost: resumable 15-train, probes everywhere, proofs, one writer ------------

def _arrays(path) -> dict:
  with np.load(path) as f:
    return {k: f[k] for k in f.files if k.startswith("params/")}


def test_train_from_a_file_resumes_after_a_kill(script, eval_project, monkeypatch):
  """15-train --save-every/--resume: a run killed after its last state continues to the same
  checkpoint as an uninterrupted run (the state file goes once the checkpoint is saved)."""
  from palijudge import learn
  flags = ("--model", "tiny", "-d", "dataset/data.tsv", "-b", "4", "--steps", "4",
           "--lr", "0.01", "--optimizer", "adam")
  code, _, err = script("15-train.py", *flags, "-s", "ck/whole.npz")
  assert code == 0, err

  def killed(*args, **kwargs):
    raise KeyboardInterrupt
  with monkeypatch.context() as m:
    m.setattr(learn, "save", killed)
    code, _, err = script("15-train.py", *flags, "-s", "ck/resumed.npz", "--save-every", "2")
  assert code == 130 and (eval_project / "ck/resumed.state.npz").is_file(), err
  code, out, err = script("15-train.py", *flags, "-s", "ck/resumed.npz", "--resume")
  assert code == 0 and "resumed from" in out and "at step 2" in out, err
  assert not (eval_project / "ck/resumed.state.npz").exists()
  _one_record_one_log(eval_project / "experiments", "resumed", 4)
  whole, resumed = _arrays(eval_project / "ck/whole.npz"), _arrays(eval_project / "ck/resumed.npz")
  assert whole.keys() == resumed.keys()
  for k in whole:
    np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)
  code, _, err = script("15-train.py", *flags, "-s", "ck/whole.npz", "--resume", "--lr", "0.02")
  assert code == 0, err  # No state left: --resume starts over, as 03's does.


def _one_record_one_log(experiments, name: str, steps: int) -> None:
  """A resumed run's record: the killed run's folder continued, not a second one beside
  it; each step logged once, in order; finished, and its summary says so."""
  from palijudge.experiments import records
  assert not list(experiments.glob(f"{name}.*")), sorted(p.name for p in experiments.iterdir())
  rec = records.RunRecord.load(experiments / name)
  assert [r["step"] for r in rec.steps()] == list(range(1, steps + 1))
  assert rec.status() == "finished" and len(rec.config()["resumed"]) == 1
  assert "- **status**: finished" in rec.summary()


def test_a_resumed_learn_run_continues_its_record(script, eval_project, probe_split,
                                                   monkeypatch):
  """03-do_learn.py --resume after a kill: one record, one continuous train_log.csv."""
  from palijudge import learn
  flags = ("-d", "pr", "-w", "rs", "--model", "tiny", "--steps", "4", "--batch", "2")

  def killed(*args, **kwargs):
    raise KeyboardInterrupt
  with monkeypatch.context() as m:
    m.setattr(learn, "save", killed)
    code, _, err = script("03-do_learn.py", *flags, "--save-every", "2")
  assert code == 130 and (eval_project / "checkpoints/rs.state.npz").is_file(), err
  code, out, err = script("03-do_learn.py", *flags, "--resume")
  assert code == 0 and "at step 2" in out, err
  _one_record_one_log(eval_project / "experiments", "rs", 4)
  ev = (eval_project / "experiments/rs/eval_metrics.json").read_text()
  assert '"before training"' in ev and '"1st trained"' in ev and '"after training"' not in ev


def test_compare_takes_a_probe_like_a_checkpoint(script, eval_project, probe_split):
  code, _, err = script("03-do_learn.py", "-d", "pr", "-w", "cmp", "--model", "tiny",
                        "--probe-only")
  assert code == 0, err
  code, out, err = script("17-compare.py", "-a", "checkpoints/cmp.probe.npz", "-b", "base",
                          "--model", "tiny", probe_split)
  assert code == 0, err
  assert f"Result: {probe_split} (A)\n  Tp=" in out and f"Result: {probe_split} (B)" in out


def test_inference_never_mixes_two_models(script, eval_project, monkeypatch):
  """Killed with -l A, resumed with -l B: refused (the proof is in OUT.partial itself);
  resumed with -l A: the file is the uninterrupted run's."""
  spec = loader.resolve("tiny", cache_dir=str(eval_project / "cache"))
  lm = loader.load(spec)
  checkpoint.save(eval_project / "ma.npz", lm.params, lm.cfg, {"tokenizer": spec.tokenizer})
  other = {**lm.params, "llm": {**lm.params["llm"], "final_norm": {
      "scale": np.asarray(lm.params["llm"]["final_norm"]["scale"]) + 1.0}}}
  checkpoint.save(eval_project / "mb.npz", other, lm.cfg, {"tokenizer": spec.tokenizer})
  args = ("-d", "dataset/data.tsv", "-b", "4", "--no-progress")
  code, _, err = script("13-inference.py", "-l", "ma.npz", *args, "-o", "mix/whole.tsv")
  assert code == 0, err
  from palijudge import predictions
  real, rows = predictions.format_row, []

  def killed_after_5(row, fmt, with_answer=False):
    rows.append(row)
    if len(rows) > 5:
      raise KeyboardInterrupt
    return real(row, fmt, with_answer)
  with monkeypatch.context() as m:
    m.setattr(predictions, "format_row", killed_after_5)
    code, _, _ = script("13-inference.py", "-l", "ma.npz", *args, "-o", "mix/out.tsv")
  partial = eval_project / "mix/out.tsv.partial"
  assert code == 130 and partial.is_file() and not (eval_project / "mix/out.tsv.partial.json"
                                                    ).exists()
  before = partial.read_bytes()
  one_line_error(script("13-inference.py", "-l", "mb.npz", *args, "-o", "mix/out.tsv"),
                 "mix/out.tsv.partial: its rows came from another model", "delete it")
  # The same file quantized scores otherwise: another model too.
  one_line_error(script("13-inference.py", "-l", "ma.npz", *args, "-o", "mix/out.tsv",
                        "--quantize", "int8"),
                 "mix/out.tsv.partial: its rows came from another model", "delete it")
  assert partial.read_bytes() == before and not (eval_project / "mix/out.tsv").exists()
  code, out, err = script("13-inference.py", "-l", "ma.npz", *args, "-o", "mix/out.tsv")
  assert code == 0 and "(5 resumed)" in out, err  # Every complete line counts.
  assert (eval_project / "mix/out.tsv").read_text() == (eval_project / "mix/whole.tsv").read_text()


def test_two_runs_with_one_name_at_once(project):
  """Two 03 runs with the same -w started together: one trains and saves, the other is
  refused at once naming the first one's pid; the checkpoint is the first one's."""
  cmd = [sys.executable, str(PLAY / "03-do_learn.py"), "--project", str(project), "-d", "set1",
         "-w", "twice", "--model", "tiny", "--steps", "4", "--batch", "2"]
  env = dict(__import__("os").environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(cmd + ["--seed", str(s)], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in (1, 2)]
  outs = [p.communicate(timeout=600) for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 2], outs
  won = next(i for i, p in enumerate(procs) if p.returncode == 0)
  lost = 1 - won
  assert "saved checkpoints/twice.npz" in outs[won][0]
  err = outs[lost][1].strip()
  assert err == (f"error: {project / 'checkpoints/twice.npz'}: another run (pid {procs[won].pid})"
                 f" is writing this checkpoint; wait for it to end, or choose another name")
  seed = checkpoint.read_meta(project / "checkpoints/twice.npz")["train_config"]["seed"]
  assert seed == won + 1


def test_a_split_name_is_one_folder_whatever_the_root(tmp_project):
  """02 -n NAME, 03 -d NAME and 12 -d NAME with --root DIR: the split is dataset/NAME for all
  three; DIR only says where the images are (it may be read-only)."""
  ads = tmp_project.root / "ads"
  synthetic.make_dataset(ads, n=12, seed=4)
  root = ["--root", "ads"]
  run_script("02-shuffle_data.py", "--data", "ads/data.jsonl", *root, "-v", "4", "-n", "adsplit",
             "--seed", "0", project=tmp_project)
  assert (tmp_project.dataset / "adsplit" / "valid.jsonl").is_file() and not (ads / "adsplit").exists()
  audit = run_script("12-audit.py", "-d", "adsplit", *root, project=tmp_project)
  assert "audit: 12 images (train 8, valid 4)" in audit.stdout
  learn = run_script("03-do_learn.py", "-d", "adsplit", *root, "--model", "tiny", "--steps", "1",
                     "--experiments", "exp", project=tmp_project)
  assert "Result: dataset/adsplit/valid.jsonl" in learn.stdout
