"""The hostile corpus: what a tired user types on a Friday evening, and what a damaged file holds.

`make hostile` runs this folder (it is part of `make test`); `-v` lists every case. Each
case runs a numbered script on one shared tiny project and checks the house rules:

- the exit status is 2 (bad input), or the documented code where another one is right (141 for
  a closed pipe, 0 where a damaged leftover is documented as ignored);
- stderr is one line (a bounded join's waiting line aside), with no traceback, naming what is
  wrong (each case names the words its line must hold);
- every file of the project is unchanged (sha256 before and after), nothing new is left but a
  checkpoint's sha256 sidecar.

Groups: an output that is an input (every path flag of every script that writes, named
plainly, with ./, absolutely, by a symbolic or a hard link), numeric extremes (0, negative,
NaN, infinite, huge, above the data's size), damaged side files, two writers at once, pipes
closed by `| head`, and joins that wait for a process that never comes. Kills inside writes
are in test_kills.py.

Most cases run in this process (runpy, as `python SCRIPT` does): refusals come before any
model is loaded, so the corpus takes seconds. Pipes, locks held by another process and
distributed joins run real subprocesses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import runpy
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from palijudge import checkpoint, files, infer, loader, predictions
from palijudge.evaluation import probe
from palijudge.data import examples as data_lib
from palijudge.data import splits, synthetic
from palijudge.params import flatten, trainable_pattern, unflatten
from testing import PLAY

SKIP = ("experiments", os.path.join("cache", "jax-compile"), os.path.join("cache", "features"))


@dataclasses.dataclass(frozen=True)
class Case:
  """One hostile run: `script` with `args` (paths from the project root; {root} is its path)."""
  name: str
  script: str
  args: tuple[str, ...]
  says: tuple[str, ...] = ()   # What the one line must hold.
  code: int = 2
  setup: Callable[[Path], None] | None = None  # Makes the case's damaged files (removed after).
  made: tuple[str, ...] = ()  # What setup makes.


# --- The project ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
  """A tiny project with every kind of file a script reads: data, splits, folds, a full
  checkpoint, deltas, a probe, prediction files, links, a study with a running trial."""
  root = tmp_path_factory.mktemp("hostile")
  spec = loader.write_random_model("tiny", str(root / "cache"), seed=0)
  data = synthetic.make_dataset(root / "dataset", n=16, seed=5)
  rows = data_lib.read_jsonl(data)
  data_lib.write_tsv(root / "dataset" / "data.tsv", rows)
  train, valid = splits.split(rows, 6, 0, stratify=True)
  for name in ("set1", "s2"):
    data_lib.write_jsonl(root / "dataset" / name / "train.jsonl", train)
    data_lib.write_jsonl(root / "dataset" / name / "valid.jsonl", valid)
  splits.write_folds(rows, 2, 0, True, root / "dataset" / "cv2")
  lm = loader.load(spec)
  ck = root / "checkpoints"
  meta = {"tokenizer": spec.tokenizer}
  checkpoint.save(ck / "full.npz", lm.params, lm.cfg, meta)
  keep = lambda name: bool(trainable_pattern("attn").search(name))  # noqa: E731
  checkpoint.save_delta(ck / "delta.npz", lm.params, keep, lm.cfg, spec.weights, meta)
  checkpoint.save_delta(ck / "delta2.npz", lm.params, keep, lm.cfg, str(ck / "full.npz"), meta)
  for name in ("x.run1.npz", "x.run3.npz"):
    shutil.copyfile(ck / "full.npz", ck / name)
  dim = lm.cfg.img.width
  probe.save(str(ck / "p.probe.npz"), probe.Probe(
      np.zeros(dim), 0.0, 1.0, 0, spec.weights_id, lm.cfg.to_dict(), spec.weights))
  preds = [predictions.PredRow(e.key, e.raw_image, e.label, 0.3 + 0.4 * e.label,
                               e.label != (i % 3 == 0)) for i, e in enumerate(rows)]
  predictions.write(str(root / "preds" / "a.tsv"), preds)
  predictions.write(str(root / "preds" / "b.jsonl"), preds)
  for folder, name, ext in (("dataset", "data", "jsonl"), ("dataset", "data", "tsv"),
                            ("checkpoints", "full", "npz"), ("preds", "a", "tsv")):
    (root / folder / f"link.{ext}").symlink_to(f"{name}.{ext}")
    os.link(root / folder / f"{name}.{ext}", root / folder / f"hard.{ext}")
  for path in list(ck.glob("*.npz")) + [root / "cache" / "tiny.npz"]:
    files.sha256_remembered(path)  # Sidecars now, so the cases leave no new file.
  _ask(root)
  return root


def _ask(root: Path) -> None:
  """A study with one running trial (the one `06-tune.py tell` cases score)."""
  proc = subprocess.run([sys.executable, str(PLAY / "06-tune.py"), "--project", str(root), "ask",
                         "--cv", "cv2", "--model", "tiny", "--seed", "0"], cwd=root,
                        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0 and "trial 0:" in proc.stdout, proc.stderr


def snapshot(root: Path) -> dict[str, str]:
  """sha256 (or link target) of every file the cases may not change."""
  out = {}
  for folder, dirs, names in os.walk(root):
    rel = os.path.relpath(folder, root)
    dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in SKIP]
    for name in names:
      path = os.path.join(folder, name)
      key = os.path.normpath(os.path.join(rel, name))
      if os.path.islink(path):
        out[key] = "-> " + os.readlink(path)
      else:
        with open(path, "rb") as f:
          out[key] = hashlib.sha256(f.read()).hexdigest()
  return out


def check_untouched(before: dict, after: dict, ignore=()) -> None:
  """Every file as it was; nothing new but sha256 sidecars (`ignore`: what the case made)."""
  ignore = {os.path.normpath(p) for p in ignore}
  changed = sorted(k for k in before if after.get(k) != before[k] and k not in ignore)
  new = sorted(k for k in after if k not in before and not k.endswith(".sha256")
               and k not in ignore)
  assert not changed and not new, (changed, new)


def one_line(err: str) -> str:
  lines = [l for l in err.strip().splitlines() if "%|" not in l]  # tqdm bars aside.
  assert "Traceback" not in err and len(lines) == 1, err
  return lines[0]


# --- Output = input: every path flag of every script that writes ------------------------------

def aliases(path: str, link: str | None = None, hard: str | None = None) -> list[tuple[str, str]]:
  """(how, spelling) of one file: plain, ./, absolute, a symbolic and a hard link."""
  out = [("plain", path), ("dot", "./" + path), ("abs", "{root}/" + path),
         ("dotdot", os.path.join(os.path.dirname(path), "..", path))]
  out += [("symlink", link)] if link else []
  out += [("hardlink", hard)] if hard else []
  return out


def clobber_cases() -> list[Case]:
  cases = []
  replace = ("would replace",)
  for how, p in aliases("dataset/data.jsonl", "dataset/link.jsonl", "dataset/hard.jsonl"):
    cases.append(Case(f"04 --scores = dataset ({how})", "04-validate.py",
                      ("--model", "tiny", "dataset/data.jsonl", "--scores", p), replace))
    cases.append(Case(f"12 --html = dataset ({how})", "12-audit.py",
                      ("dataset/data.jsonl", "--html", p), replace))
  cases += [
      Case("04 --scores = the second file", "04-validate.py",
           ("--model", "tiny", "dataset/data.jsonl", "dataset/data.tsv", "--scores",
            "dataset/data.tsv"), replace),
      Case("04 --scores = an --eval-set file", "04-validate.py",
           ("--model", "tiny", "dataset/data.jsonl", "--eval-set", "v=dataset/set1/valid.jsonl",
            "--scores", "dataset/set1/valid.jsonl"), replace),
      Case("04 --scores = -m checkpoint", "04-validate.py",
           ("-m", "checkpoints/full.npz", "dataset/data.jsonl", "--scores",
            "checkpoints/full.npz"), ("unknown prediction file format",)),
      Case("12 --html = a -d split file", "12-audit.py",
           ("-d", "set1", "--html", "dataset/set1/train.jsonl"), replace),
  ]
  for how, p in aliases("dataset/data.tsv", "dataset/link.tsv", "dataset/hard.tsv"):
    cases.append(Case(f"13 -o = -d ({how})", "13-inference.py",
                      ("--model", "tiny", "-d", "dataset/data.tsv", "-o", p, "--overwrite"),
                      replace))
  cases += [
      Case("13 -o = -d jsonl", "13-inference.py",
           ("--model", "tiny", "-d", "dataset/data.jsonl", "-o", "dataset/data.jsonl",
            "--overwrite"), replace),
      Case("13 -o's partial file = -d", "13-inference.py",
           ("--model", "tiny", "-d", "dataset/p.tsv.partial", "-o", "dataset/p.tsv"), replace,
           setup=lambda r: shutil.copyfile(r / "dataset/data.tsv", r / "dataset/p.tsv.partial"),
           made=("dataset/p.tsv.partial",)),
  ]
  for how, p in aliases("preds/a.tsv", "preds/link.tsv", "preds/hard.tsv"):
    cases.append(Case(f"16 -o = its input ({how})", "16-filter_train_data.py",
                      ("preds/a.tsv", "--keep", "errors", "-o", p), replace))
  cases.append(Case("16 -o = its second input", "16-filter_train_data.py",
                    ("preds/a.tsv", "preds/b.jsonl", "-o", "preds/b.jsonl"), replace))
  for how, p in aliases("checkpoints/full.npz", "checkpoints/link.npz", "checkpoints/hard.npz"):
    cases.append(Case(f"09 -o = -m ({how})", "09-export_full.py",
                      ("-m", "checkpoints/full.npz", "-o", p), replace))
    cases.append(Case(f"15 -s = -l ({how})", "15-train.py",
                      ("--model", "tiny", "-d", "dataset/data.tsv", "-l", "checkpoints/full.npz",
                       "-s", p), replace))
  for how, p in aliases("cache/tiny.npz"):
    cases.append(Case(f"09 -o = the delta's base ({how})", "09-export_full.py",
                      ("-m", "checkpoints/delta.npz", "-o", p), ("the delta's base",)))
  cases += [
      Case("09 -o = the delta itself", "09-export_full.py",
           ("-m", "checkpoints/delta.npz", "-o", "checkpoints/delta.npz"), replace),
      Case("09 -o = the tokenizer", "09-export_full.py",
           ("-m", "checkpoints/full.npz", "-o", "cache/tiny_tokenizer.model"),
           ("the tokenizer",)),
      Case("09 -o = --base", "09-export_full.py",
           ("-m", "checkpoints/delta.npz", "--base", "cache/tiny.npz", "-o", "cache/tiny.npz"),
           replace),
      Case("15 -s = --model", "15-train.py",
           ("--model", "checkpoints/full.npz", "-d", "dataset/data.tsv", "-s",
            "checkpoints/full.npz"), replace),
      Case("15 -s = the -l delta's base", "15-train.py",
           ("--model", "tiny", "-d", "dataset/data.tsv", "-l", "checkpoints/delta.npz", "-s",
            "cache/tiny.npz"), ("the delta's base",)),
      Case("15 -s = the preset's weights", "15-train.py",
           ("--model", "tiny", "-d", "dataset/data.tsv", "-s", "cache/tiny.npz"), replace),
      Case("15 -s's train state = -d", "15-train.py",
           ("--model", "tiny", "-d", "dataset/q.state.npz", "-s", "dataset/q.npz"), replace,
           setup=lambda r: shutil.copyfile(r / "dataset/data.tsv", r / "dataset/q.state.npz"),
           made=("dataset/q.state.npz",)),
  ]
  for how, model in (("plain", "checkpoints/full.npz"), ("dot", "./checkpoints/full.npz"),
                     ("abs", "{root}/checkpoints/full.npz"),
                     ("dotdot", "checkpoints/../checkpoints/full.npz")):
    cases.append(Case(f"03 -w = --model ({how})", "03-do_learn.py",
                      ("-d", "set1", "-w", "full", "--model", model), replace))
  cases += [
      Case("03 -w = --model (symlink)", "03-do_learn.py",
           ("-d", "set1", "-w", "link", "--model", "checkpoints/full.npz"), replace),
      Case("03 -w = --model (hardlink)", "03-do_learn.py",
           ("-d", "set1", "-w", "hard", "--model", "checkpoints/full.npz"), replace),
      Case("03 -w = the --model delta's base", "03-do_learn.py",
           ("-d", "set1", "-w", "full", "--model", "checkpoints/delta2.npz"),
           ("the delta's base",)),
      Case("03 -w --keep all: a run file is --model", "03-do_learn.py",
           ("-d", "set1", "-w", "x", "--runs", "2", "--keep", "all", "--model",
            "checkpoints/x.run1.npz"), replace),
      Case("03 -w --keep all: --model is an earlier lottery's run file", "03-do_learn.py",
           ("-d", "set1", "-w", "x", "--runs", "2", "--keep", "all", "--model",
            "checkpoints/x.run3.npz"), replace),
      Case("03 --cv -w = --model", "03-do_learn.py",
           ("--cv", "cv2", "-w", "full", "--model", "checkpoints/full.npz"), replace),
      Case("03 -w = --tokenizer", "03-do_learn.py",
           ("-d", "set1", "-w", "tok", "--model", "tiny", "--tokenizer", "checkpoints/tok.npz"),
           replace, setup=lambda r: shutil.copyfile(r / "cache/tiny_tokenizer.model",
                                                    r / "checkpoints/tok.npz"),
           made=("checkpoints/tok.npz",)),
  ]
  for how, data in (("train", "dataset/s2/train.jsonl"), ("valid", "dataset/s2/valid.jsonl"),
                    ("abs", "{root}/dataset/s2/train.jsonl"),
                    ("dotdot", "dataset/s2/../s2/train.jsonl")):
    cases.append(Case(f"02 --data inside the split it rebuilds ({how})", "02-shuffle_data.py",
                      ("--data", data, "-n", "s2", "-v", "2", "--seed", "1"),
                      ("lies inside", "rebuilds")))
  cases += [
      Case("02 --folds: --data inside the folds it rebuilds", "02-shuffle_data.py",
           ("--data", "dataset/cv2/fold-1/train.jsonl", "-n", "cv2", "--folds", "2"),
           ("lies inside",)),
      Case("02 --data = the whole dataset folder's split", "02-shuffle_data.py",
           ("--data", "dataset/data.jsonl", "-n", ".", "-v", "2"), ("itself",)),
      Case("02 -n set1/..", "02-shuffle_data.py",
           ("-n", "set1/..", "-v", "2"), ("itself",)),
      Case("02 -n ../out", "02-shuffle_data.py", ("-n", "../out", "-v", "2"), ("leaves",)),
      Case("02 -n /abs", "02-shuffle_data.py", ("-n", "/tmp/x", "-v", "2"), ("not a path",)),
      Case("02 -n ''", "02-shuffle_data.py", ("-n", "", "-v", "2"), ("plain name",)),
      Case("06 --cv outside the dataset", "06-tune.py", ("ask", "--cv", "../../outside"),
           ("leaves",)),
      Case("06 --cv that does not exist", "06-tune.py", ("ask", "--cv", "nosuchcv"),
           ("no fold splits here",)),
      Case("03 --record = a dataset folder", "03-do_learn.py",
           ("-d", "set1", "--model", "tiny", "--record", "dataset/set1"), ("dataset/set1",)),
  ]
  return cases


# --- Numeric extremes -------------------------------------------------------------------------

def given(flag: str, value: str) -> tuple[str, ...]:
  """`flag value`, or `flag=value` for a value argparse would read as a flag (-1, -inf)."""
  return (f"{flag}={value}",) if value.startswith("-") else (flag, value)


LEARN = ("03-do_learn.py", ("-d", "set1", "-w", "n", "--model", "tiny"))
TRAIN = ("15-train.py", ("--model", "tiny", "-d", "dataset/data.tsv", "-s", "checkpoints/n.npz"))


def numeric_cases() -> list[Case]:
  bad = {  # flag: (values, words the line holds)
      "--steps": (("0", "-1", str(2 ** 31), str(10 ** 12)), "--steps must be in 1.."),
      "--batch": (("0", "-1"), "--batch must be >= 1"),
      "--accum": (("0", "-1"), "--accum must be >= 1"),
      "--lr": (("0", "-1", "nan", "inf", "-inf"), "--lr must be > 0"),
      "--warmup": (("-0.1", "1", "nan"), "warm-up fraction"),
      "--print-every": (("0", "-5"), "print_every must be >= 1"),
      "--save-every": (("-1",), "--save-every must be >= 0"),
      "--max-restarts": (("-1",), "--max-restarts must be >= 0"),
      "--diverge-loss": (("-1", "nan"), "--diverge-loss must be >= 0"),
      "--lora-rank": (("0", "-1"), "--lora-rank must be >= 1"),
      "--lora-alpha": (("0", "-1", "nan", "inf"), "--lora-alpha must be a finite number"),
      "--label-smoothing": (("-0.1", "1", "nan"), "label"),
      "--pos-weight": (("0", "-1", "nan"), "pos"),
  }
  cases = []
  for script, base in (LEARN, TRAIN):
    tag = script[:2]
    for flag, (values, says) in bad.items():
      short = {"--batch": "-b", "--lr": "-r"}.get(flag, flag) if tag == "15" else flag
      for v in values:
        loss = ("--loss", "bce") if flag == "--pos-weight" else ()
        cases.append(Case(f"{tag} {short} {v}", script, base + loss + given(short, v),
                          (says,) if flag not in ("--label-smoothing", "--pos-weight")
                          else ()))
    for flag, v, says in (("--batch", "100000", "examples per step, more than its"),
                          ("--accum", "1000", "x --accum 1000 takes"),
                          ("--steps", "nan", "invalid int value"),
                          ("--batch", "2.5", "invalid int value"),
                          ("--threshold", "nan", "--threshold must be in (0, 1)"),
                          ("--threshold", "1", "--threshold must be in (0, 1)"),
                          ("--class-weight", "0,1", "--class-weight needs two positive"),
                          ("--class-weight", "nan,1", "--class-weight needs two positive")):
      short = {"--batch": "-b"}.get(flag, flag) if tag == "15" else flag
      if flag == "--threshold" and tag == "15":
        continue  # 15 trains only: no --threshold.
      cases.append(Case(f"{tag} {short} {v}", script, base + given(short, v), (says,)))
  cases += [Case(f"15 -t {v}", *TRAIN[:1], TRAIN[1] + given("-t", v), (says,))
            for v, says in (("0", "-t/--repeat must be >= 1"), ("-3", "-t/--repeat must be >= 1"),
                            (str(10 ** 12), "steps, more than"))]
  cases += [Case(f"03 --runs {v}", *LEARN[:1], LEARN[1] + given("--runs", v),
                 ("--runs must be >= 1",))
            for v in ("0", "-1")]
  judge = {"04-validate.py": ("--model", "tiny", "dataset/data.jsonl"),
           "13-inference.py": ("--model", "tiny", "-d", "dataset/data.tsv"),
           "05-rank_prompts.py": ("--model", "tiny", "dataset/data.jsonl", "--prompt", "ok?"),
           "17-compare.py": ("-a", "base", "-b", "checkpoints/full.npz", "--model", "tiny",
                             "dataset/data.jsonl")}
  for script, base in judge.items():
    for v in ("0", "1", "-0.5", "nan", "inf", "1.5"):
      cases.append(Case(f"{script[:2]} --threshold {v}", script, base + given("--threshold", v),
                        ("--threshold must be in (0, 1)",)))
    cases.append(Case(f"{script[:2]} --eval-batch 0", script, base + ("--eval-batch", "0"),
                      ("--eval-batch must be >= 1",)))
  for script, base in (("14-validate_outtsv.py", ("preds/a.tsv",)),
                       ("16-filter_train_data.py", ("preds/a.tsv",))):
    for v in ("0", "1", "-1", "nan", "inf"):
      cases.append(Case(f"{script[:2]} --threshold {v}", script, base + given("--threshold", v),
                        ("--threshold must be in (0, 1)",)))
  cases += [
      Case("16 --max 0", "16-filter_train_data.py", ("preds/a.tsv", "--max", "0"),
           ("--max must be >= 1",)),
      Case("16 --max -4", "16-filter_train_data.py", ("preds/a.tsv", "--max=-4"),
           ("--max must be >= 1",)),
      Case("17 --resamples 0", "17-compare.py", ("-a", "preds/a.tsv", "-b", "preds/b.jsonl",
                                                 "--resamples", "0"), ("--resamples",)),
      Case("17 --list -1", "17-compare.py", ("-a", "preds/a.tsv", "-b", "preds/b.jsonl",
                                             "--list=-1"), ("--list",)),
      Case("12 --show -1", "12-audit.py", ("dataset/data.jsonl", "--show=-1"), ("--show",)),
      Case("04 --gallery-max 0", "04-validate.py", judge["04-validate.py"]
           + ("--gallery-max", "0"), ("--gallery-max must be >= 1",)),
      Case("04 --gif-frames -1", "04-validate.py", judge["04-validate.py"]
           + ("--gif-frame", "all", "--gif-frames=-1"), ("--gif-frames must be >= 0",)),
  ]
  for script, base in (("02-shuffle_data.py", ("-n", "z", "-v", "2")),
                       ("12-audit.py", ("dataset/data.jsonl",))):
    for v in ("-2", "64", "1000"):
      cases.append(Case(f"{script[:2]} --hash-bits {v}", script, base + given("--hash-bits", v),
                        ("--hash-bits",)))
    for v in ("nan", "1.5", "-2"):
      cases.append(Case(f"{script[:2]} --cosine {v}", script, base + given("--cosine", v),
                        ("--cosine",)))
  for v, says in (("0", "0"), ("-1", "-1"), ("17", "17"), ("100000", "100000")):
    cases.append(Case(f"02 -v {v}", "02-shuffle_data.py", ("-n", "z") + given("-v", v), (says,)))
  for v in ("0", "1", "-2", "17"):
    cases.append(Case(f"02 --folds {v}", "02-shuffle_data.py", ("-n", "z") + given("--folds", v),
                      (f"--folds {v}",)))
  cases += [
      Case("06 run --trials 0", "06-tune.py", ("run", "--trials", "0", "--cv", "cv2"),
           ("--trials must be >= 1",)),
      Case("06 --heartbeat 0", "06-tune.py", ("status", "--heartbeat", "0"), ("must be >= 1",)),
      Case("06 --grace -1", "06-tune.py", ("status", "--grace=-1"), ("must be >= 1",)),
      Case("06 --quantize int3", "06-tune.py", ("ask", "--cv", "cv2", "--quantize", "int3"),
           ("--quantize", "int3")),
  ]
  for v in ("1.7", "-0.1", "100"):
    cases.append(Case(f"06 tell {v}", "06-tune.py", ("tell", "0", "--", v), ("lies in [0, 1]",)))
  for v in ("nan", "inf", "-inf"):
    cases.append(Case(f"06 tell {v}", "06-tune.py", ("tell", "0", "--", v), ("must be finite",)))
  dash = lambda v: f"{v} is read as a flag: write --flag={v}"  # noqa: E731
  for script, args, says in (  # Bare negatives: a flag to some parsers, a value to others.
      ("03-do_learn.py", LEARN[1] + ("--steps", "-1"), dash("-1")),
      ("15-train.py", TRAIN[1] + ("-r", "-inf"), dash("-inf")),
      ("06-tune.py", ("tell", "0", "-0.5"), "lies in [0, 1]"),
      ("14-validate_outtsv.py", ("preds/a.tsv", "--threshold", "-1"), "--threshold must be")):
    cases.append(Case(f"{script[:2]} {' '.join(args[-2:])} (a bare negative)", script, args,
                      (says,)))
  cases.append(Case("06 tell a word", "06-tune.py", ("tell", "0", "good"),
                    ("score must be a number",)))
  for flag, v, says in (("--batch", "0", "batch"), ("--accum", "0", "accum"),
                        ("--budget", "-1", "budget"), ("--budget", "nan", "budget"),
                        ("--budget", "0", "budget"), ("--seqlen", "0", "seqlen"),
                        ("--seqlen", "-3", "seqlen")):
    cases.append(Case(f"10 {flag} {v}", "10-plan.py", ("--model", "tiny") + given(flag, v),
                      (says,)))
  return cases


# --- Distributed flags refused before any join ------------------------------------------------

def distributed_cases() -> list[Case]:
  base = ("14-validate_outtsv.py", ("preds/a.tsv", "--distributed"))
  cases = []
  for address in ("not_a_host", ":1234", "host:", "127.0.0.1:0", "127.0.0.1:70000",
                  "127.0.0.1:abc", "[::1]"):
    cases.append(Case(f"--coordinator {address!r}", base[0], base[1] + (
        "--coordinator", address, "--num-processes", "2", "--process-id", "1"),
        ("expected HOST:PORT",)))
  cases.append(Case("--coordinator unresolvable", base[0], base[1] + (
      "--coordinator", "no-such-host.invalid:1234", "--num-processes", "2", "--process-id", "1"),
      ("cannot resolve the host",)))
  for flags, says in ((("--num-processes", "0"), "--num-processes must be >= 1"),
                      (("--num-processes", "2", "--process-id=-1"), "--process-id must be"),
                      (("--num-processes", "2", "--process-id", "2"), "must be in 0..1"),
                      (("--heartbeat-timeout", "0"), "--heartbeat-timeout must be >= 1"),
                      (("--init-timeout", "0"), "--init-timeout must be >= 1")):
    cases.append(Case(f"distributed {' '.join(flags)}", base[0], base[1] + (
        "--coordinator", "127.0.0.1:1234") + flags, (says,)))
  cases.append(Case("--coordinator without --distributed", base[0],
                    ("preds/a.tsv", "--coordinator", "127.0.0.1:1234"), ("need --distributed",)))
  return cases


# --- Damaged files ----------------------------------------------------------------------------

def _write(rel: str, data: bytes) -> Callable[[Path], None]:
  def setup(root: Path) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
  return setup


def _partial_of(rel: str, **change) -> Callable[[Path], None]:
  """OUT.partial as `13-inference.py --model tiny -d dataset/data.tsv` would have left it,
  its proof line `change`d (another model, other data)."""
  def setup(root: Path) -> None:
    from palijudge.configs import EvalConfig
    ecfg = EvalConfig().resolved()
    spec = loader.resolve("tiny", cache_dir=str(root / "cache"))
    rows = data_lib.read_examples(root / "dataset/data.tsv")
    source = infer.Source(
        model=spec.weights, data="dataset/data.tsv", n_examples=len(rows),
        model_id=f"{spec.weights_id}+{files.sha256(spec.tokenizer)}", data_id=infer.data_id(rows))
    proof = {**infer.proof(source, ecfg), **change}
    head = "".join(predictions.header("tsv"))
    (root / rel).write_text(infer.PROOF + json.dumps(proof, sort_keys=True) + "\n" + head)
  return setup


def _truncated(rel: str, out: str) -> Callable[[Path], None]:
  def setup(root: Path) -> None:
    raw = (root / rel).read_bytes()
    (root / out).write_bytes(raw[:len(raw) // 2])
  return setup


def _object_array(rel: str) -> Callable[[Path], None]:
  """The full checkpoint with one parameter replaced by a (pickled) object array."""
  def setup(root: Path) -> None:
    with np.load(root / "checkpoints/full.npz") as f:
      arrays = {k: f[k] for k in f.files}
    arrays["params/llm/final_norm/scale"] = np.array([{"evil": 1}], dtype=object)
    np.savez(root / rel, **arrays)
  return setup


DAMAGE = {  # name: setup for the damaged file (written as checkpoints/bad.npz or alike)
    "empty": b"",
    "random bytes": np.random.default_rng(0).bytes(2048),
    "text": b"this is not an archive\n",
    "pickle": pickle.dumps({"a": 1}),
    "npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"
           + b" " * 48 + b"\n" + b"\x00" * 8,
}


def damaged_cases() -> list[Case]:
  cases = []
  partial = "preds/o.tsv.partial"
  run13 = ("--model", "tiny", "-d", "dataset/data.tsv", "-o", "preds/o.tsv")
  for name, first in (("empty", b""), ("not JSON", b"#palijudge-partial {oops\n"),
                      ("a JSON list", b"#palijudge-partial [1, 2]\n"),
                      ("an older version's (no proof)", b"id\timage\tlabel\tp_yes\tpred\tprefix\n"),
                      ("binary", b"\x00\xff\xfe" * 40)):
    cases.append(Case(f"13 OUT.partial {name}", "13-inference.py", run13,
                      ("holds no proof",), setup=_write(partial, first), made=(partial,)))
  for name, change, says in (("another model", dict(model_id="f" * 64), "another model"),
                             ("other data", dict(data_id="0" * 64), "other data"),
                             ("another prompt", dict(prompt="is it ok?"), "other settings")):
    cases.append(Case(f"13 OUT.partial of {name}", "13-inference.py", run13, (says,),
                      setup=_partial_of(partial, **change), made=(partial,)))
  cases.append(Case("13 OUT.partial of this very run (documented: resumed)", "13-inference.py",
                    run13 + ("--no-progress",), code=0, setup=_partial_of(partial),
                    made=(partial, "preds/o.tsv")))
  for name, side in (("empty", b""), ("not JSON", b"{oops"), ("a JSON list", b"[1, 2]")):
    cases.append(Case(f"13 an older version's OUT.partial.json, {name} (documented: ignored)",
                      "13-inference.py", run13 + ("--no-progress",), code=0,
                      setup=_write(partial + ".json", side),
                      made=(partial + ".json", "preds/o.tsv")))
  for name, data in DAMAGE.items():
    bad = "checkpoints/bad.npz"
    cases.append(Case(f"04 -m {name} .npz", "04-validate.py",
                      ("-m", bad, "dataset/data.jsonl"), (bad,), setup=_write(bad, data),
                      made=(bad,)))
    cases.append(Case(f"13 -l {name} .npz", "13-inference.py",
                      ("-l", bad, "-d", "dataset/data.tsv"), (bad,), setup=_write(bad, data),
                      made=(bad,)))
    state = "checkpoints/st.state.npz"
    cases.append(Case(f"15 --resume with a {name} train state", "15-train.py",
                      ("--model", "tiny", "-d", "dataset/data.tsv", "-s", "checkpoints/st.npz",
                       "--resume"), (state,), setup=_write(state, data), made=(state,)))
  for script, args in (("04-validate.py", ("-m", "checkpoints/half.npz", "dataset/data.jsonl")),
                       ("09-export_full.py", ("-m", "checkpoints/half.npz", "-o", "out.npz")),
                       ("15-train.py", ("--model", "tiny", "-l", "checkpoints/half.npz", "-d",
                                        "dataset/data.tsv", "-s", "checkpoints/h2.npz"))):
    cases.append(Case(f"{script[:2]} a truncated checkpoint", script, args,
                      ("checkpoints/half.npz",),
                      setup=_truncated("checkpoints/full.npz", "checkpoints/half.npz"),
                      made=("checkpoints/half.npz",)))
  cases.append(Case("04 -m an object array", "04-validate.py",
                    ("-m", "checkpoints/obj.npz", "dataset/data.jsonl"), ("never loaded",),
                    setup=_object_array("checkpoints/obj.npz"), made=("checkpoints/obj.npz",)))
  folds = "dataset/cvx/folds.json"
  for name, text in (("empty", b""), ("not JSON", b"{k: 2"), ("a list", b"[2]"),
                     ("k a word", b'{"k": "two"}'), ("missing folds", b'{"k": 3}')):
    for script, args in (("03-do_learn.py", ("--cv", "cvx", "--model", "tiny")),
                         ("12-audit.py", ("-d", "cvx"))):
      cases.append(Case(f"{script[:2]} folds.json {name}", script, args, ("cvx",),
                        setup=_write(folds, text), made=(folds,)))
  rows = {"invalid JSON": b'{"image": "images/x.png", \n', "a list": b"[1, 2]\n",
          "unknown label": b'{"prefix": "", "suffix": "maybe", "image": "%s"}\n',
          "a missing image": b'{"prefix": "", "suffix": "yes", "image": "images/none.png"}\n',
          "an image outside the root": b'{"prefix": "", "suffix": "yes", "image": "../x.png"}\n',
          "not UTF-8": b'\xff\xfe{"a": 1}\n', "empty": b""}
  for name, text in rows.items():
    bad = "dataset/bad.jsonl"
    for script, args in (("04-validate.py", ("--model", "tiny", bad)),
                         ("13-inference.py", ("--model", "tiny", "-d", bad, "-i", "dataset")),
                         ("02-shuffle_data.py", ("--data", bad, "-n", "z", "-v", "1"))):
      cases.append(Case(f"{script[:2]} data: {name}", script, args, ("bad.jsonl",),
                        setup=_bad_data(bad, text), made=(bad,)))
  tabbed = "dataset/tab.jsonl"
  cases.append(Case("13 a row TSV cannot hold (tab in the prefix)", "13-inference.py",
                    ("--model", "tiny", "-d", tabbed, "-i", "dataset", "-o", "preds/t.tsv"),
                    ("tab.jsonl:2: its prefix", "JSONL"), setup=_tabbed(tabbed), made=(tabbed,)))
  cases.append(Case("04 --scores a row TSV cannot hold", "04-validate.py",
                    ("--model", "tiny", tabbed, "--root", "dataset", "--scores", "preds/t.tsv"),
                    ("tab.jsonl:2: its prefix",), setup=_tabbed(tabbed), made=(tabbed,)))
  cases.append(Case("06 a study file that is not a database", "06-tune.py",
                    ("status", "--storage", "dataset/data.jsonl"), ("data.jsonl",)))
  cases.append(Case("06 a search space that is not YAML", "06-tune.py",
                    ("ask", "--space", "dataset/data.tsv"), ("data.tsv",)))
  return cases


def _bad_data(rel: str, text: bytes) -> Callable[[Path], None]:
  def setup(root: Path) -> None:
    image = json.loads((root / "dataset/data.jsonl").read_text().splitlines()[0])["image"]
    good = (root / "dataset/data.jsonl").read_bytes().splitlines(keepends=True)[0]
    (root / rel).write_bytes(good + (text.replace(b"%s", image.encode()) if text else b""))
    if not text:
      (root / rel).write_bytes(b"")
  return setup


def _tabbed(rel: str) -> Callable[[Path], None]:
  def setup(root: Path) -> None:
    lines = (root / "dataset/data.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["prefix"] = "is it\tok?"
    (root / rel).write_text("\n".join([lines[0], json.dumps(row)] + lines[2:]) + "\n")
  return setup


CASES = clobber_cases() + numeric_cases() + distributed_cases() + damaged_cases()


def test_the_corpus_is_large_and_its_names_unique():
  names = [c.name for c in CASES]
  assert len(set(names)) == len(names), [n for n in names if names.count(n) > 1]
  assert len(CASES) >= 200


@pytest.fixture
def run_case(root, monkeypatch, capsys):
  monkeypatch.chdir(root)
  monkeypatch.syspath_prepend(str(PLAY))

  def run(case: Case) -> tuple[int, str, str]:
    args = [a.replace("{root}", str(root)) for a in case.args]
    monkeypatch.setattr(sys, "argv", [case.script, "--project", str(root), *args])
    code = 0
    try:
      runpy.run_path(str(PLAY / case.script), run_name="__main__")
    except SystemExit as e:
      code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err
  return run


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile(case, root, run_case):
  if case.setup:
    case.setup(root)
  try:
    before = snapshot(root)
    code, out, err = run_case(case)
    after = snapshot(root)
  finally:
    for rel in case.made:
      files.remove(root / rel)
  assert code == case.code, (code, out, err)
  if case.code == 0:  # A documented success: silent stderr.
    assert "Traceback" not in err and not [l for l in err.splitlines() if "%|" not in l], err
  else:
    line = one_line(err)
    for words in case.says:
      assert words in line, (words, line)
  check_untouched(before, after, case.made)


# --- Two writers at once: another process holds the name --------------------------------------

HOLD = """
import sys, time
from palijudge import files
with files.lock(sys.argv[1]):
  print("held", flush=True)
  time.sleep(120)
"""

WRITERS = [
    ("03 -w", "checkpoints/busy.npz", "03-do_learn.py",
     ("-d", "set1", "-w", "busy", "--model", "tiny")),
    ("15 -s", "checkpoints/busy.npz", "15-train.py",
     ("--model", "tiny", "-d", "dataset/data.tsv", "-s", "checkpoints/busy.npz")),
    ("09 -o", "busy.npz", "09-export_full.py", ("-m", "checkpoints/delta.npz", "-o", "busy.npz")),
    ("13 -o", "preds/busy.tsv", "13-inference.py",
     ("--model", "tiny", "-d", "dataset/data.tsv", "-o", "preds/busy.tsv")),
    ("02 -n", "dataset/busy", "02-shuffle_data.py", ("-n", "busy", "-v", "2")),
]


@pytest.mark.parametrize("name, held, script, args", WRITERS, ids=[w[0] for w in WRITERS])
def test_a_second_writer_is_refused(name, held, script, args, root, run_case):
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root / held)], text=True,
                            stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline() == "held\n"
    before = snapshot(root)
    code, out, err = run_case(Case(name, script, args))
    after = snapshot(root)
  finally:
    holder.kill()
    holder.wait()
    files.remove(files.lock_path(root / held))  # The killed holder's (stale) lock file.
  assert code == 2, (out, err)
  assert f"another run (pid {holder.pid}) is writing" in one_line(err)
  before.pop(os.path.relpath(files.lock_path(root / held), root), None)
  after.pop(os.path.relpath(files.lock_path(root / held), root), None)
  check_untouched(before, after)


# --- `| head`: a closed pipe ends a script quietly --------------------------------------------

PIPES = [
    ("14-validate_outtsv.py", ("preds/a.tsv", "--total", "--json")),
    ("16-filter_train_data.py", ("preds/a.tsv", "--keep", "not-tp")),
    ("13-inference.py", ("--model", "tiny", "-d", "dataset/data.tsv", "-b", "8")),
    ("00-params.py", ("--model", "tiny")),
    ("10-plan.py", ("--model", "tiny")),
    ("11-write_random_checkpoint.py", ("--model", "tiny", "--dry-run")),
    ("06-tune.py", ("space",)),
    ("06-tune.py", ("status",)),
    ("17-compare.py", ("-a", "preds/a.tsv", "-b", "preds/b.jsonl")),
    ("04-validate.py", ("--model", "tiny", "dataset/data.jsonl")),
]


@pytest.mark.parametrize("script, args", PIPES, ids=[f"{s[:2]} {a[0]} | head" for s, a in PIPES])
def test_a_closed_pipe_ends_quietly(script, args, root):
  """As `SCRIPT | head` when head has read enough: exit 141 (128 + SIGPIPE), stderr silent."""
  before = snapshot(root)
  # Block-buffered stdout, as in a user's shell (PYTHONUNBUFFERED would hide the order).
  env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
  proc = subprocess.Popen([sys.executable, str(PLAY / script), "--project", str(root), *args],
                          cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(env, JAX_PLATFORMS="cpu"))
  proc.stdout.close()  # The reader is gone before the first line.
  err = proc.stderr.read()
  assert proc.wait(timeout=300) == 141, err
  assert err == "", err
  check_untouched(before, snapshot(root))


# --- Joins that would wait forever --------------------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("process", [0, 1], ids=["a peer never starts", "no coordinator"])
def test_a_join_that_never_completes_stops_in_bounded_time(process, root):
  """Process 0 alone (its peer never starts) or process 1 alone (nothing listens): after
  the quiet seconds one line says what it waits for, where and how long; then one line."""
  import time
  port = _free_port()
  start = time.monotonic()
  proc = subprocess.run([sys.executable, str(PLAY / "14-validate_outtsv.py"), "--project",
                         str(root), "preds/a.tsv", "--distributed", "--coordinator",
                         f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
                         str(process), "--init-timeout", "4"], cwd=root, capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  took = time.monotonic() - start
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  what = "the other 1 process(es)" if process == 0 else "the coordinator (process 0)"
  assert lines[0] == (f"process {process} of 2: waiting up to 4 s (--init-timeout) for {what}"
                      f"{' to join the coordinator' if process == 0 else ''} at 127.0.0.1:{port}")
  assert lines[-1].startswith(f"error: --distributed: process {process} of 2: gave up after 4 s")
  assert len(lines) == 2 and took < 60
