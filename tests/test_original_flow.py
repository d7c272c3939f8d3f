"""The original scripts' flow on the demo data, and splits that find their images.

`tests/original_flow.sh` is the README table's commands as a newcomer types them after
`make demo` (02 -> 03 -> 04 -> 13 -> 14 -> 15 -> 16, the tiny model), each step's output
feeding the next; it runs here in a fresh project laid out as a clone is (playground/ at its
root), with only what `make demo` leaves before it trains. The split tests run 02 on data in
every place a user keeps it, with the flags the user gives, then 03, 12 and 04 on the split
by name alone and with the same flags.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testing import PLAY, ROOT, in_process

from palijudge import loader
from palijudge.data import splits
from palijudge.files import Project
from palijudge.tools import demo

pytestmark = pytest.mark.script


def _fresh_project(root: Path, n_images: int) -> Project:
  """A clone's layout (playground/ at the root) holding what `make demo` writes before it
  trains: the tiny model and tokenizer in cache/, the demo data and its two other forms."""
  shutil.copytree(PLAY, root / "playground", ignore=shutil.ignore_patterns("__pycache__"))
  project = Project.at(root)
  loader.write_random_model("tiny", str(project.cache), seed=0)
  demo.generate(project, n_images=n_images, seed=0, log=lambda line: None)
  return project


def test_the_original_flow_runs_as_written_on_the_demo_data(tmp_path):
  project = _fresh_project(tmp_path / "clone", 200)  # The demo's own size.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
  proc = subprocess.run(["bash", "-x", str(ROOT / "tests" / "original_flow.sh")],
                        cwd=project.root, capture_output=True, text=True, env=env, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out, root = proc.stdout, project.root
  assert json.loads((root / "dataset/set1/split.json").read_text())["root"] == ".."
  assert "saved checkpoints/trained-set1.npz" in out
  assert "Result: dataset/set1/valid.jsonl\n  Tp=" in out  # 04 on the split's files.
  assert len((root / "out.tsv").read_text().splitlines()) == 201  # 13: a header + every row.
  assert "Aggregate: out.tsv\n  Tp=" in out
  assert ("Data: dataset/demo/data.tsv  200 rows (120 yes, 80 no); out.tsv judged all of them, "
          "the labels agree") in out
  assert "training on 200 examples: lr 0.001, batch 10, 160 steps" in out  # ceil(200/10) x 8
  rows = (root / "next.tsv").read_text().splitlines()
  assert len(rows) == 64 and all(r.startswith("images/") for r in rows)  # No header line.
  assert "training on 64 examples: lr 0.001, batch 10, 56 steps" in out  # ceil(64/10) x 8
  for name in ("trained-set1", "tsv", "next"):
    assert (root / "checkpoints" / f"{name}.npz").is_file()


@pytest.fixture
def script(tmp_path, monkeypatch, capsys):
  project = _fresh_project(tmp_path / "p", 12)
  (tmp_path / "p" / "dataset" / "data.jsonl").unlink()  # Only the demo's own folder.
  shutil.copytree(project.dataset / "demo", tmp_path / "elsewhere")
  shutil.copytree(project.dataset / "demo" / "images", tmp_path / "pics" / "images")
  (tmp_path / "lists").mkdir()
  shutil.copy(project.dataset / "demo" / "data.jsonl", tmp_path / "lists" / "ads.jsonl")
  return in_process(project.root, monkeypatch, capsys)


WHERE = {  # Data files a user splits, and the flags that say where their images are.
    "demo data with --root": ("dataset/demo/data.jsonl", ("--root", "dataset/demo")),
    "a folder outside the project": ("../elsewhere/data.jsonl", ()),
    "a list apart from its images": ("../lists/ads.jsonl", ("--root", "../pics")),
}


@pytest.mark.parametrize("case", list(WHERE))
@pytest.mark.parametrize("folds", [False, True], ids=["split", "folds"])
def test_a_split_finds_its_images_by_name_alone(script, tmp_path, case, folds):
  data, where = WHERE[case]
  made = ("--folds", "2") if folds else ("-v", "4")
  code, out, err = script("02-shuffle_data.py", *made, "-n", "s", "--data", data, *where,
                          "--seed", "1")
  assert code == 0, err
  pick = ("--cv", "s") if folds else ("-d", "s")
  train = ("--model", "tiny", "--steps", "1", "--batch", "2")
  for flags in ((), where):  # By name alone, then with the flags the user just used.
    code, out, err = script("03-do_learn.py", *pick, *train, *flags)
    assert code == 0, err
    assert ("CV " if folds else "Result: dataset/s/valid.jsonl (1st trained)") in out
    code, out, err = script("12-audit.py", "-d", "s", *flags)
    assert code == 0 and "0 leak(s) across sets" in out, err
  valid = "dataset/s/fold-1/valid.jsonl" if folds else "dataset/s/valid.jsonl"
  code, out, err = script("04-validate.py", "--model", "tiny", valid)
  assert code == 0 and out.startswith(f"Result: {valid}\n"), err
  record = json.loads((tmp_path / "p" / "dataset" / "s" / splits.RECORD).read_text())
  images = (tmp_path / "p" / "dataset" / "demo" if case.startswith("demo") else
            tmp_path / "elsewhere" if "outside" in case else tmp_path / "pics")
  assert Path(record["root"]) == (Path(os.path.realpath(images)) if record["root"].startswith("/")
                                  else Path("../demo"))


def test_the_old_split_layout_still_resolves_against_dataset(script, tmp_path):
  """A split without a record (the original shell script's, or made before records): its
  image paths start from dataset/, as they always did."""
  project = Project.at(tmp_path / "p")
  rows = (project.dataset / "demo" / "data.jsonl").read_text().splitlines()
  for name, part in (("train.jsonl", rows[:8]), ("valid.jsonl", rows[8:])):
    (project.dataset / "old" / name).parent.mkdir(parents=True, exist_ok=True)
    (project.dataset / "old" / name).write_text(
        "".join(json.dumps({**json.loads(r), "image": "demo/" + json.loads(r)["image"]}) + "\n"
                for r in part))
  code, out, err = script("03-do_learn.py", "-d", "old", "--model", "tiny", "--steps", "1",
                          "--batch", "2")
  assert code == 0 and "Result: dataset/old/valid.jsonl (1st trained)" in out, err
