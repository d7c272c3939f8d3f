"""palijudge.options: config fields become flags (types, defaults, help) and come back."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from palijudge import cli, options
from palijudge.errors import UserError
from palijudge.options import group, option


@dataclasses.dataclass(frozen=True)
class Demo:
  steps: int = option(10, "training steps", short="-s")
  lr: float = option(0.03, "learning rate")
  name: str = option("run", "run name")
  fast: bool = option(False, "skip the slow part")
  out: str | None = option(None, "output file", metavar="FILE")
  margin: float = option(0.5, "margin of the hinge loss", sparse=True)
  mode: str = option("mean", "how to combine", choices=("mean", "max"))
  gif_frame: str = option("first", "which frame", flag="--frame")
  not_a_flag: int = 7  # No option(): never on the command line.

  def __post_init__(self):
    if self.steps < 1:
      raise UserError(f"--steps must be >= 1, got {self.steps}")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser()
  options.add(p, Demo)
  return p


def _action(p: argparse.ArgumentParser, dest: str) -> argparse.Action:
  (action,) = [a for a in p._actions if a.dest == dest]
  return action


def test_flags_have_the_fields_types_and_defaults():
  p = _parser()
  assert [f.name for f in options.flags(Demo)] == [
      "steps", "lr", "name", "fast", "out", "margin", "mode", "gif_frame"]
  steps, lr, name, out = (_action(p, d) for d in ("steps", "lr", "name", "out"))
  assert steps.option_strings == ["-s", "--steps"] and steps.type is int and steps.default == 10
  assert lr.option_strings == ["--lr"] and lr.type is float and lr.default == 0.03
  assert name.type is str and name.default == "run"
  assert out.type is str and out.default is None and out.metavar == "FILE"
  fast = _action(p, "fast")
  assert isinstance(fast, argparse._StoreTrueAction) and fast.default is False
  assert _action(p, "mode").choices == ("mean", "max")
  assert _action(p, "gif_frame").option_strings == ["--frame"]
  assert _action(p, "margin").type is float and _action(p, "margin").default is None
  assert not [a for a in p._actions if a.dest == "not_a_flag"]
  args = p.parse_args(["-s", "3", "--lr", "1e-4", "--out", "x.tsv", "--fast", "--mode", "max",
                       "--frame", "last", "--margin", "0.2"])
  assert (args.steps, args.lr, args.out, args.fast, args.mode, args.gif_frame, args.margin) == (
      3, 1e-4, "x.tsv", True, "max", "last", 0.2)
  with pytest.raises(SystemExit):
    p.parse_args(["--mode", "median"])


def test_build_round_trips():
  assert options.build(Demo, _parser().parse_args([])) == Demo()
  cfg = Demo(steps=3, lr=1e-4, name="x", fast=True, out="o.tsv", margin=0.25, mode="max",
             gif_frame="last")
  argv = ["--steps", "3", "--lr", "0.0001", "--name", "x", "--fast", "--out", "o.tsv",
          "--margin", "0.25", "--mode", "max", "--frame", "last"]
  assert options.build(Demo, _parser().parse_args(argv)) == cfg
  # `fixed` fields win; missing flags (e.g. skipped) keep the field default.
  p = argparse.ArgumentParser()
  options.add(p, Demo, skip=("name",), defaults={"steps": 5})
  assert _action(p, "steps").default == 5
  assert options.build(Demo, p.parse_args([]), not_a_flag=8) == Demo(steps=5, not_a_flag=8)


def test_sparse_values_are_passed_only_when_given():
  seen = []

  @dataclasses.dataclass(frozen=True)
  class Spy(Demo):
    def __post_init__(self):
      seen.append(self.margin)

  p = argparse.ArgumentParser()
  options.add(p, Spy)
  assert p.parse_args([]).margin is None  # No argparse default ...
  assert options.build(Spy, p.parse_args([])).margin == 0.5  # ... so the field's applies.
  assert options.build(Spy, p.parse_args(["--margin", "0.5"])).margin == 0.5
  assert options.build(Spy, p.parse_args(["--margin", "0.1"])).margin == 0.1
  assert seen == [0.5, 0.5, 0.1]
  # Given and defaulted are told apart: only a given value reaches the constructor.
  kwargs = []
  original = Spy.__init__

  def spying_init(self, **kw):
    kwargs.append(sorted(kw))
    original(self, **kw)

  Spy.__init__ = spying_init
  options.build(Spy, p.parse_args([]))
  options.build(Spy, p.parse_args(["--margin", "0.5"]))
  assert "margin" not in kwargs[0] and "margin" in kwargs[1]
  assert "steps" in kwargs[0]  # Non-sparse flags are always passed.


def test_help_shows_each_default_exactly_once():
  @dataclasses.dataclass(frozen=True)
  class Tree:
    demo: Demo = group(Demo, "Demo config")
  text = " ".join(cli.parser(Tree, "demo").format_help().split())
  text = text[text.index("Demo config:"):]
  for default in ("10", "0.03", "run", "none", "0.5", "mean", "first"):
    assert text.count(f"(default: {default})") == 1, (default, text)
  assert text.count("(default:") == 7  # Not for --fast (a switch, off unless given).


def test_post_init_errors_surface_through_build():
  with pytest.raises(UserError, match=r"--steps must be >= 1, got 0"):
    options.build(Demo, _parser().parse_args(["--steps", "0"]))


# --- Config trees: a script's whole command line ---------------------------------------

@dataclasses.dataclass(frozen=True)
class Inner:
  kind: str = option("ce", "objective", flag="--loss", sparse=True)
  weight: float = option(1.0, "weight", sparse=True)

  @classmethod
  def from_flags(cls, given: dict) -> "Inner":
    if "weight" in given and given.get("kind", "ce") == "ce":
      raise UserError("--weight applies to another loss")
    return cls(**given)


@dataclasses.dataclass(frozen=True)
class Recipe:
  lr: float = option(0.03, "learning rate", short="-r")
  loss: Inner = group(Inner, "objective")


@dataclasses.dataclass(frozen=True)
class Stages:
  seed: int = option(0, "seed")
  runs: int = option(1, "runs")


@dataclasses.dataclass(frozen=True)
class Tool:
  files: tuple[str, ...] = option((), "inputs", positional="+")
  extra: tuple[str, ...] = option((), "extra set (repeat)", many=True, metavar="NAME=FILE")
  root: str | None = option(None, "root", flag="--root", names=("-i", "--images"))
  recipe: Recipe = group(Recipe, "training", aliases={"lr": "--rate"})
  fixed: dict = group(Stages, "fixed for every trial", skip=("seed",), given_only=True)


def test_a_config_tree_is_parsed_and_built_whole():
  cfg = options.parse(Tool, ["a.jsonl", "b.tsv", "--extra", "x=1", "--extra", "y=2", "-i", "imgs",
                             "--rate", "0.1"])
  assert cfg == Tool(files=("a.jsonl", "b.tsv"), extra=("x=1", "y=2"), root="imgs",
                     recipe=Recipe(lr=0.1), fixed={})
  assert options.parse(Tool, ["a", "--images", "d"]).root == "d"
  assert options.parse(Tool, ["a", "--runs", "3"]).fixed == {"runs": 3}  # Only those given.
  assert options.parse(Tool, ["a"]).recipe.loss == Inner()
  with pytest.raises(SystemExit):
    options.parse(Tool, ["a", "--seed", "1"])  # Skipped: not a flag here.
  # A nested group is built by its class's from_flags, from the flags given.
  assert options.parse(Tool, ["a", "--loss", "bce", "--weight", "2"]).recipe.loss == Inner(
      "bce", 2.0)
  with pytest.raises(UserError, match="applies to another loss"):
    options.parse(Tool, ["a", "--weight", "2"])
  # The whole tree, flat, is what a run record stores as its flags.
  assert options.flat(options.parse(Tool, ["a", "-r", "0.5"])) == {
      "files": ["a"], "extra": [], "root": None, "lr": 0.5, "kind": "ce", "weight": 1.0}
  assert options.flat(options.parse(Tool, ["a", "--runs", "2"]))["runs"] == 2


def test_a_given_only_group_holds_only_the_flags_given():
  p = argparse.ArgumentParser()
  options.add(p, Recipe, given_only=True)
  assert options.build(Recipe, p.parse_args([]), loss=Inner()) == Recipe()
  assert vars(p.parse_args([])) == {}
  assert vars(p.parse_args(["--loss", "bce"])) == {"kind": "bce"}


def test_sub_commands_each_build_their_own_config():
  @dataclasses.dataclass(frozen=True)
  class Tell:
    trial: int = option(None, "trial", positional=1)
    reason: str = option("", "why")

  spec = {"tell": (Tell, "record"), "tool": (Tool, "run the tool")}
  assert options.parse(spec, ["tell", "4", "--reason", "oom"]) == Tell(4, "oom")
  assert options.parse(spec, ["tool", "a"]).files == ("a",)
  with pytest.raises(SystemExit):
    options.parse(spec, ["tell", "four"])


def test_a_skipped_field_keeps_its_default_though_another_flag_has_its_name():
  """15-train.py's own --steps (None: computed from the data) beside TrainConfig's steps."""
  @dataclasses.dataclass(frozen=True)
  class Trainer:
    steps: int | None = option(None, "steps (default: one pass)", suppress_default=True)
    recipe: Demo = group(Demo, "recipe", skip=("steps",))

  assert options.parse(Trainer, []) == Trainer(None, Demo())
  assert options.parse(Trainer, ["--steps", "4"]) == Trainer(4, Demo())
