"""palijudge.cli: the options scripts share (the loss flags of a config tree),
every script's --help (each default shown once, equal to its config field's, without
jax), and the options layer as the only place that speaks argparse."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import runpy
import sys

import pytest
from testing import PLAY

from palijudge import cli, configs, train
from palijudge.data import splits
from palijudge.errors import UserError
from palijudge.losses import LossConfig
from palijudge.options import group

SCRIPTS = sorted(p.name for p in PLAY.glob("[0-9][0-9]-*.py"))


@dataclasses.dataclass(frozen=True)
class Script:
  """A script's config tree, as 03-do_learn.py composes one."""
  root: str | None = cli.root_option()
  load: configs.LoadConfig = group(configs.LoadConfig, "model", defaults={"model": "tiny"})
  eval: configs.EvalConfig = group(configs.EvalConfig, "evaluation")
  eval_set: tuple[str, ...] = cli.eval_set_option()
  train: configs.TrainConfig = group(configs.TrainConfig, "training")


def _args(argv) -> Script:
  return cli.parse(Script, argv)[0]


def _config_of(script: str):
  """The config spec of a numbered script (its module run without its main)."""
  if str(PLAY) not in sys.path:
    sys.path.insert(0, str(PLAY))  # Its `import _env`.
  module = runpy.run_path(str(PLAY / script), run_name="not_main")
  return module.get("Config") or module["COMMANDS"]


def _loss(argv) -> LossConfig:
  return _args(argv).train.loss


def test_loss_config_from_flags(tiny_examples):
  tr = tiny_examples[1][:7]  # Weights come from this split's own counts.
  counts = splits.class_counts(tr)
  assert counts["yes"] and counts["no"]
  cfg = _loss(["--loss", "focal", "--focal-gamma", "2", "--class-weight", "auto"])
  assert cfg == LossConfig(kind="focal", focal_gamma=2.0, class_weight="auto")
  n = len(tr)
  assert cfg.resolved(counts["yes"], counts["no"]) == LossConfig(
      kind="focal", focal_gamma=2.0, class_weight=(n / (2 * counts["yes"]),
                                                   n / (2 * counts["no"])))
  args = _args(["--loss", "focal", "--focal-gamma", "2"])
  assert args.train.loss == LossConfig(kind="focal", focal_gamma=2.0)
  assert _loss(["--class-weight", "2,0.5"]).class_weight == (2.0, 0.5)
  assert _loss([]) == LossConfig()


@pytest.mark.parametrize("argv, match", [
    (["--loss", "bce", "--focal-gamma", "3"], "--focal-gamma applies to --loss focal/combined, not bce"),
    (["--pos-weight", "2"], "--pos-weight applies to"),
    (["--loss", "focal", "--bce-weight", "1"], "--bce-weight applies to --loss combined, not focal"),
    (["--class-weight", "2"], "auto or W_YES,W_NO"),
    (["--loss", "bce", "--pos-weight", "2", "--class-weight", "auto"], "use one"),
])
def test_flags_of_another_loss_are_refused(argv, match):
  with pytest.raises(UserError, match=match):
    _loss(argv)


# --- Every script's --help -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Help:
  parser: argparse.ArgumentParser
  text: str

  def entry(self, action: argparse.Action) -> str:
    """The action's lines of the printed help, whitespace collapsed."""
    head = "  " + self.parser._get_formatter()._format_action_invocation(action)
    lines = self.text.splitlines()
    start = next(i for i, l in enumerate(lines) if l == head or l.startswith(head + " "))
    out = [lines[start]]
    for line in lines[start + 1:]:
      if not line.startswith("   "):
        break
      out.append(line)
    return " ".join(" ".join(out).split())


@pytest.fixture(scope="module")
def helps() -> dict[str, Help]:
  """{script: its parser and `--help` text}, each script run in this process."""
  out, parse = {}, argparse.ArgumentParser.parse_args
  with pytest.MonkeyPatch.context() as mp:
    mp.syspath_prepend(str(PLAY))
    mp.setenv("COLUMNS", "100")
    for name in SCRIPTS:
      parsers = []
      mp.setattr(argparse.ArgumentParser, "parse_args",
                 lambda self, *a, seen=parsers, **k: (seen.append(self), parse(self, *a, **k))[1])
      mp.setattr(sys, "argv", [name, "--help"])
      text = io.StringIO()
      with contextlib.redirect_stdout(text), pytest.raises(SystemExit) as done:
        runpy.run_path(str(PLAY / name), run_name="__main__")
      assert done.value.code in (0, None), name
      out[name] = Help(parsers[0], text.getvalue())
  return out


DEFAULT = re.compile(r"(?:\(|;\s*)default\b")


def _shows_a_default(value) -> bool:
  return value not in (None, False, argparse.SUPPRESS, [])


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_each_default_once(helps, script):
  h = helps[script]
  assert h.text.startswith("usage: ")
  wrong = []
  for action in h.parser._actions:
    if not action.option_strings or action.help == argparse.SUPPRESS:
      continue
    entry = h.entry(action)
    n = len(DEFAULT.findall(entry))
    shown = " ".join(str(action.default).split()) in entry
    if n > 1 or (_shows_a_default(action.default) and (n != 1 or not shown)):
      wrong.append(entry)
  assert not wrong, "\n".join(wrong)


SHARED = {"--lr": (train.TrainConfig, "lr"), "--batch": (train.TrainConfig, "batch_size"),
          "--threshold": (configs.EvalConfig, "threshold"),
          "--eval-batch": (configs.EvalConfig, "eval_batch"),
          "--gallery-max": (configs.EvalConfig, "gallery_max")}


def _field_default(cls, name):
  return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def test_shared_flag_defaults_are_the_config_defaults(helps):
  seen = set()
  for script, h in helps.items():
    for action in h.parser._actions:
      for flag in set(action.option_strings) & set(SHARED):
        cls, field = SHARED[flag]
        want = _field_default(cls, field)
        assert action.default == want, (script, flag, action.default, want)
        if want is not None:
          assert f"(default: {want})" in h.entry(action), (script, flag)
        seen.add(flag)
  assert seen == set(SHARED)  # Every flag is checked on some script.
  assert (train.TrainConfig.lr, train.TrainConfig.batch_size) == (0.03, 2)  # The colab's.
  learn, _ = cli.parse(_config_of("03-do_learn.py"), [])
  assert learn.train == train.TrainConfig()
  assert learn.eval == configs.EvalConfig()


# `--help` does not wait for jax: every flag comes from a config in configs.py (or the
# script's own), which imports no jax; the scripts import heavy modules inside main.
@pytest.mark.script
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_does_not_import_jax(script):
  import subprocess
  probe = ("import runpy, sys\n"
           f"sys.path.insert(0, {str(PLAY)!r}); sys.argv = [{script!r}, '--help']\n"
           f"try:\n  runpy.run_path({str(PLAY / script)!r}, run_name='__main__')\n"
           "except SystemExit:\n  pass\n"
           "print('jax' in sys.modules, file=sys.stderr)")
  proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                        timeout=300)
  assert "usage:" in proc.stdout, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == "False", f"{script} --help imported jax"


# --- The options layer is the only place that speaks argparse ------------------------

ARGPARSE_CALLS = {"add_argument", "add_argument_group", "add_mutually_exclusive_group",
                  "add_subparsers", "add_parser", "set_defaults"}


def test_no_flag_is_declared_outside_the_options_layer():
  """Every flag is a config field (options.option): no script or module adds one by hand."""
  import ast
  from testing import ROOT
  sources = [*sorted((ROOT / "src" / "palijudge").rglob("*.py")), *sorted(PLAY.glob("*.py"))]
  found = []
  for path in sources:
    if path.name == "options.py":
      continue
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
          and node.func.attr in ARGPARSE_CALLS:
        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.attr}")
  assert len(sources) > 60 and not found, "\n".join(found)


def test_each_script_is_one_config_and_an_entry():
  """`cli.run(Config, main)`: the script's whole command line is its config tree."""
  for script in SCRIPTS:
    text = (PLAY / script).read_text()
    assert "cli.run(Config, main)" in text or "cli.run(COMMANDS, main)" in text, script
    spec = _config_of(script)
    for cls in (spec.values() if isinstance(spec, dict) else [spec]):
      cls = cls[0] if isinstance(cls, tuple) else cls
      assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, script
