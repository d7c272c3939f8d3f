"""The evaluation scripts (04, 05, 13, 14, 16) end to end on the tiny model, and their
bad input: run in this process (runpy) to stay fast, exactly as `python SCRIPT` runs them."""

from __future__ import annotations

import json
import pathlib
import runpy
import sys

import pytest

from palijudge import checkpoint, evaluate
from palijudge.data import examples as data
from palijudge import loader as session
from palijudge.data import synthetic as synthetic

PLAY = pathlib.Path(__file__).resolve().parents[1] / "playground"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
  root = tmp_path_factory.mktemp("proj")
  session.write_random_model("tiny", str(root / "cache"), seed=0)
  path = synthetic.make_dataset(root / "dataset", n=16, seed=4, yes_fraction=0.75)
  data.write_examples(root / "dataset" / "data.tsv", data.read_examples(path))
  return root


@pytest.fixture
def script(project, monkeypatch, capsys):
  monkeypatch.chdir(project)

  def run(name, *args):
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    code = 0
    try:
      runpy.run_path(str(PLAY / name), run_name="__main__")
    except SystemExit as e:
      code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err
  return run


def one_line_error(result, *needles):
  code, _, err = result
  lines = [l for l in err.strip().splitlines() if "%|" not in l]  # tqdm lines aside.
  assert code == 2 and len(lines) == 1 and "Traceback" not in err, result
  for n in needles:
    assert n in lines[0], (n, lines[0])


def test_infer_aggregate_filter_validate(script, project):
  code, out, err = script("13-inference.py", "--model", "tiny", "-d", "dataset/data.tsv",
                          "-b", "4", "-o", "out/full.tsv")
  assert code == 0 and "wrote out/full.tsv: 16 rows" in out, err
  rows = (project / "out/full.tsv").read_text().splitlines()
  assert rows[0] == "id\timage\tlabel\tp_yes\tpred\tprefix" and len(rows) == 17
  code, out, _ = script("14-validate_outtsv.py", "out/full.tsv", "--threshold", "0.2", "--json")
  assert code == 0 and out.startswith("Aggregate: out/full.tsv\n  Tp=") and "  ROC-AUC:" in out
  assert json.loads(out.splitlines()[-1])["threshold"] == 0.2
  code, _, err = script("16-filter_train_data.py", "out/full.tsv", "--keep", "not-tp",
                        "--threshold", "0.2", "-o", "dataset/next.tsv")
  assert code == 0 and "kept " in err
  code, out, _ = script("04-validate.py", "--model", "tiny", "dataset/next.tsv", "--root",
                        "dataset", "--eval-set", "all=dataset/data.jsonl", "--pick-threshold",
                        "all", "--target", "recall=0.9", "--gallery", "gal", "--scores", "s.tsv")
  assert code == 0 and "picked on all for --target recall=0.9" in out
  assert "Result: dataset/next.tsv\n" in out and "Result: all\n" in out
  assert len(list((project / "gal").glob("*.html"))) == 2
  assert (project / "s.tsv").read_text().startswith("id\timage\tlabel\tp_yes\tpred")


def test_validate_uses_the_checkpoint_threshold(script, project):
  spec = session.resolve("tiny", cache_dir=str(project / "cache"))
  lm = session.load(spec)
  checkpoint.save(project / "ck.npz", lm.params, lm.cfg,
                  {"tokenizer": spec.tokenizer, "threshold": 0.25})
  code, out, err = script("04-validate.py", "-m", "ck.npz", "dataset/data.jsonl")
  assert code == 0 and "  threshold: 0.25\n" in out, err
  code, out, _ = script("04-validate.py", "-m", "ck.npz", "dataset/data.jsonl",
                        "--threshold", "0.5")
  assert "  threshold: 0.5\n" in out


def test_rank_prompts(script, project):
  (project / "prompts.txt").write_text("# candidates\nIs this ad lawful?\n")
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
  lm = session.load(session.resolve("tiny", cache_dir=str(project / "cache")))
  exs = data.read_examples(project / "dataset/data.jsonl")
  p = evaluate.evaluate(lm, exs, prompt=session.DEFAULT_PROMPT).p_yes
  no = max((i for i, e in enumerate(exs) if not e.label), key=lambda i: p[i])
  yes = min((i for i, e in enumerate(exs) if e.label), key=lambda i: p[i])
  assert p[no] > p[yes]
  data.write_examples(project / "dataset/pair.jsonl", [exs[no], exs[yes]])
  return "dataset/pair.jsonl"


def test_bad_input_is_one_line(script, project):
  (project / "empty.txt").write_text("# nothing\n\n")
  one_line_error(script("05-rank_prompts.py", "--model", "tiny", "dataset/data.jsonl",
                        "--prompts", "empty.txt"), "empty.txt: no prompts")
  (project / "nopred.tsv").write_text("image\tlabel\nimages/x.png\tyes\n")
  one_line_error(script("14-validate_outtsv.py", "nopred.tsv"),
                 "nopred.tsv: missing column(s) pred")
  one_line_error(script("04-validate.py", "--model", "tiny", "dataset/data.jsonl",
                        "--threshold", "0.3", "--pick-threshold", "data"), "contradict")
  one_line_error(script("04-validate.py", "--model", "tiny", "dataset/data.jsonl",
                        "--threshold", "1.5"), "--threshold must be in (0, 1)")
  one_line_error(script("04-validate.py", "--model", "tiny", _misranked_pair(project),
                        "--pick-threshold", "pair", "--target", "precision=0.9"),
                 "cannot be reached on dataset/pair.jsonl", "the best precision is 0.5000")
  one_line_error(script("16-filter_train_data.py", "nopred.tsv", "--keep", "fp"),
                 "missing column(s) pred")
  one_line_error(script("13-inference.py", "--model", "tiny", "-d", "dataset/data.csv"),
                 "expected .jsonl or .tsv")
  assert not (project / "out/x.tsv").exists()
