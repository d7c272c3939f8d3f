"""Command-line options declared once, on the config dataclasses they fill.

A config field declared with `option(default, help, ...)` becomes a flag:
`--field-name` (or the `flag` given), its type from the field's annotation,
its default and help written once, here. `add(parser, Config)` adds a config's
flags to a parser; `build(Config, args)` makes the config back from the parsed
flags. Configs validate themselves in `__post_init__`, so a bad value is
refused the same way from the command line, a search trial or a saved record.

`sparse=True` flags have no argparse default (None): `build` then passes only
the values the user gave, so a config can tell "given" from "defaulted" (the
loss refuses parameters of another loss); their help still shows the default.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Sequence

_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def option(default: Any, help: str, *, flag: str | None = None, short: str | None = None,
           choices: Sequence[str] | None = None, metavar: str | None = None,
           parse: Callable[[str], Any] | None = None, sparse: bool = False) -> Any:
  """A dataclass field that is also a command-line flag (see the module docstring)."""
  meta = dict(help=help, flag=flag, short=short, choices=choices, metavar=metavar, parse=parse,
              sparse=sparse)
  return dataclasses.field(default=default, metadata={"option": meta})


def _type(field: dataclasses.Field) -> tuple[Callable[[str], Any] | None, bool]:
  """(converter, is_bool) from an annotation such as `float`, `int | None`, `bool`."""
  name = str(field.type).replace(" ", "").replace("|None", "").replace("None|", "")
  if name == "bool":
    return None, True
  return _TYPES.get(name, str), False


def flags(cls) -> list[dataclasses.Field]:
  return [f for f in dataclasses.fields(cls) if "option" in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
  """The field's long flag: its `flag`, else --field-name."""
  return field.metadata["option"]["flag"] or "--" + field.name.replace("_", "-")


def add(parser: argparse.ArgumentParser, cls, title: str | None = None,
        skip: Sequence[str] = (), defaults: dict[str, Any] | None = None,
        aliases: dict[str, str] | None = None, given_only: bool = False) -> None:
  """Adds `cls`'s option fields to `parser` (in a group titled `title`).

  `defaults` replaces some fields' defaults for this parser; `aliases` gives
  fields another flag name here (e.g. the original scripts' `-r` for --lr);
  `given_only` leaves a flag the user did not give out of the parsed namespace
  (a search's fixed flags: only those given are fixed).
  """
  group = parser.add_argument_group(title) if title else parser
  for f in flags(cls):
    if f.name in skip:
      continue
    m = f.metadata["option"]
    default = (defaults or {}).get(f.name, f.default)
    names = [flag_name(f)] + ([m["short"]] if m["short"] else [])
    names += [(aliases or {})[f.name]] if f.name in (aliases or {}) else []
    convert, is_bool = _type(f)
    if is_bool:
      group.add_argument(*names, dest=f.name, action="store_true", help=m["help"],
                         **({"default": argparse.SUPPRESS} if given_only else {}))
      continue
    help_text = m["help"]
    if m["sparse"] or given_only:
      help_text += f" (default: {default})"
      default = argparse.SUPPRESS if given_only else None
    elif default is None and "(default" not in help_text:
      help_text += " (default: none)"
    group.add_argument(*names, dest=f.name, type=m["parse"] or convert, default=default,
                       choices=m["choices"], metavar=m["metavar"], help=help_text)


def given(cls, args: argparse.Namespace) -> dict[str, Any]:
  """The values of `cls`'s flags in `args`, sparse ones only when the user gave them."""
  kw = {}
  for f in flags(cls):
    if not hasattr(args, f.name):
      continue
    value = getattr(args, f.name)
    if f.metadata["option"]["sparse"] and value is None:
      continue
    kw[f.name] = value
  return kw


def build(cls, args: argparse.Namespace, **fixed: Any):
  """`cls` from the parsed flags (sparse ones only when given), plus `fixed` fields."""
  return cls(**{**given(cls, args), **fixed})
