"""Command-line options declared once, on the config dataclasses they fill.

The options layer: the only place that speaks argparse. A config field
declared with `option(default, help, ...)` becomes a flag: `--field-name` (or
the `flag` given), its type from the field's annotation, its default and help
written once, there. A field declared with `group(Config, title)` nests a
concern's config (its flags in a titled group), so a script's config is one
tree: its own fields plus the concerns it composes (`configs.py`).

- `parser_for(Config, parser)` adds a tree's flags; `build(Config, args)` makes
  the tree back from the parsed flags; `parse(Config, argv)` does both.
- `add(parser, Config)` / `given` / `build` also work on one flat config (a
  search's fixed flags, `experiments.tune`).
- A dict {command: Config} is a command line with sub-commands (06-tune.py):
  the built tree is the chosen command's config.

Configs validate themselves in `__post_init__`, so a bad value is refused the
same way from the command line, a search trial or a saved record.

`sparse=True` flags have no argparse default (None): `build` then passes only
the values the user gave, so a config can tell "given" from "defaulted" (the
loss refuses parameters of another loss, through its `from_flags`); their
help still shows the default. `many=True` flags repeat (a tuple of values);
`positional="+"`/`"*"`/`"?"`/`1` makes a field a positional argument.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Mapping, Sequence

_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}
_COMMAND = "_command"  # Where the chosen sub-command's name lands in the namespace.


def option(default: Any, help: str, *, flag: str | None = None, short: str | None = None,
           names: Sequence[str] = (), choices: Sequence[str] | None = None,
           metavar: str | None = None, parse: Callable[[str], Any] | None = None,
           sparse: bool = False, many: bool = False, positional: str | int | None = None,
           required: bool = False, suppress_default: bool = False) -> Any:
  """A dataclass field that is also a command-line flag (see the module docstring).

  `names`: more flag strings (the original scripts' `-i` beside --root);
  `suppress_default`: help shows no "(default: ...)" (a value computed later).
  """
  meta = dict(help=help, flag=flag, short=short, names=tuple(names), choices=choices,
              metavar=metavar, parse=parse, sparse=sparse, many=many, positional=positional,
              required=required, suppress_default=suppress_default)
  return dataclasses.field(default=default, metadata={"option": meta})


def group(cls, title: str, *, skip: Sequence[str] = (), defaults: Mapping[str, Any] | None = None,
          aliases: Mapping[str, str] | None = None, no_short: Sequence[str] = (),
          given_only: bool = False) -> Any:
  """A field holding a nested config `cls`, its flags under `title` (see `add` for the rest).

  With `given_only` the built field is a dict of the flags the user gave, not a config
  (a search's fixed flags: only those given are fixed).
  """
  meta = dict(cls=cls, title=title, skip=tuple(skip), defaults=dict(defaults or {}),
              aliases=dict(aliases or {}), no_short=tuple(no_short), given_only=given_only)
  return dataclasses.field(default_factory=dict if given_only else cls, metadata={"group": meta})


def _type(field: dataclasses.Field) -> tuple[Callable[[str], Any] | None, bool]:
  """(converter, is_bool) from an annotation such as `float`, `int | None`, `tuple[int, ...]`."""
  kind = field.type  # A string under `from __future__ import annotations`, else a type.
  name = kind.__name__ if isinstance(kind, type) else str(kind)
  name = name.replace(" ", "").replace("|None", "").replace("None|", "")
  if name.startswith("tuple[") and name.endswith(",...]"):
    name = name[len("tuple["):-len(",...]")]
  if name == "bool":
    return None, True
  return _TYPES.get(name, str), False


def flags(cls) -> list[dataclasses.Field]:
  """`cls`'s own option fields (not those of its nested groups)."""
  return [f for f in dataclasses.fields(cls) if "option" in f.metadata]


def groups(cls) -> list[dataclasses.Field]:
  """`cls`'s nested config fields (`group`)."""
  return [f for f in dataclasses.fields(cls) if "group" in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
  """The field's long flag: its `flag`, else --field-name."""
  return field.metadata["option"]["flag"] or "--" + field.name.replace("_", "-")


def add(parser: argparse.ArgumentParser, cls, title: str | None = None,
        skip: Sequence[str] = (), defaults: Mapping[str, Any] | None = None,
        aliases: Mapping[str, str] | None = None, given_only: bool = False,
        no_short: Sequence[str] = ()) -> None:
  """Adds `cls`'s option fields to `parser` (in a group titled `title`), then its groups'.

  `defaults` replaces some fields' defaults for this parser; `aliases` gives
  fields another flag name here (e.g. the original scripts' `-r` for --lr);
  `no_short` drops some fields' short flag here (a script whose -b is another
  flag); `given_only` leaves a flag the user did not give out of the parsed
  namespace (a search's fixed flags: only those given are fixed).
  """
  target = parser.add_argument_group(title) if title else parser
  for f in flags(cls):
    if f.name not in skip:
      _add_one(target, f, (defaults or {}).get(f.name, f.default), (aliases or {}).get(f.name),
               given_only, f.name in no_short)
  for f in groups(cls):
    g = f.metadata["group"]
    add(parser, g["cls"], g["title"], g["skip"], g["defaults"], g["aliases"],
        given_only or g["given_only"], g["no_short"])


def _add_one(target, f: dataclasses.Field, default: Any, alias: str | None, given_only: bool,
             no_short: bool) -> None:
  m = f.metadata["option"]
  convert, is_bool = _type(f)
  help_text = m["help"]
  if m["positional"] is not None:
    nargs = None if m["positional"] == 1 else m["positional"]
    target.add_argument(f.name, nargs=nargs, type=m["parse"] or convert,
                        choices=m["choices"], metavar=m["metavar"], help=help_text,
                        **({} if m["positional"] in ("+", 1) else {"default": default}))
    return
  names = ([m["short"]] if m["short"] and not no_short else []) + [flag_name(f)]
  names += list(m["names"]) + ([alias] if alias else [])
  if is_bool:
    target.add_argument(*names, dest=f.name, action="store_true", help=help_text,
                        **({"default": argparse.SUPPRESS} if given_only else {}))
    return
  if m["sparse"] or given_only:
    help_text += f" (default: {default})"
    default = argparse.SUPPRESS if given_only else None
  elif m["many"]:
    default = None  # argparse appends to a list default in place: start from none.
  elif m["suppress_default"] or m["required"] or (default is None and "(default" not in help_text):
    help_text += "" if m["suppress_default"] or m["required"] else " (default: none)"
  kw = dict(action="append") if m["many"] else {}
  target.add_argument(*names, dest=f.name, type=m["parse"] or convert, default=default,
                      choices=m["choices"], metavar=m["metavar"], required=m["required"],
                      help=help_text, **kw)


def given(cls, args: argparse.Namespace, skip: Sequence[str] = ()) -> dict[str, Any]:
  """The values of `cls`'s own flags in `args` (but `skip`: not its flags here, though
  another field may have the name), sparse ones only when the user gave them."""
  kw = {}
  for f in flags(cls):
    if f.name in skip or not hasattr(args, f.name):
      continue
    value = getattr(args, f.name)
    m = f.metadata["option"]
    if m["sparse"] and value is None:
      continue
    if m["many"] or (m["positional"] in ("+", "*")):
      value = tuple(value or ())
    kw[f.name] = value
  return kw


def build(cls, args: argparse.Namespace, **fixed: Any):
  """The config tree `cls` from the parsed flags (sparse ones only when given), plus `fixed`.

  A nested group is built the same way, by its class's `from_flags(given)` when it has one
  (the loss checks which flags were given); a `given_only` group is the dict of those given.
  """
  return _build(cls, args, (), fixed)


def _build(cls, args: argparse.Namespace, skip: Sequence[str], fixed: dict[str, Any]):
  kw = given(cls, args, skip)
  for f in groups(cls):
    if f.name in fixed:
      continue
    g = f.metadata["group"]
    kw[f.name] = (_given_tree(g["cls"], args, g["skip"]) if g["given_only"]
                  else _build(g["cls"], args, g["skip"], {}))
  kw.update(fixed)
  make = getattr(cls, "from_flags", None)
  return make(kw) if make is not None else cls(**kw)


def _given_tree(cls, args: argparse.Namespace, skip: Sequence[str]) -> dict[str, Any]:
  out = dict(given(cls, args, skip))
  for f in groups(cls):
    out.update(_given_tree(f.metadata["group"]["cls"], args, f.metadata["group"]["skip"]))
  return out


def flat(config) -> dict[str, Any]:
  """{flag field: value} over a whole tree (what a run record stores as its `args`)."""
  out: dict[str, Any] = {}
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if "group" in f.metadata:
      out.update(value if isinstance(value, dict) else flat(value))
    elif "option" in f.metadata:
      out[f.name] = list(value) if isinstance(value, tuple) else value
  return out


# --- Whole command lines ---------------------------------------------------------

def parser_for(spec, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds the flags of `spec` (a config tree, or {command: (tree, help)}) to `parser`."""
  if not isinstance(spec, Mapping):
    add(parser, spec)
    return parser
  sub = parser.add_subparsers(dest=_COMMAND, required=True, metavar="COMMAND")
  for name, (cls, help_text) in spec.items():
    one = sub.add_parser(name, help=help_text, description=help_text,
                         formatter_class=parser.formatter_class)
    one.error = parser.error  # One line and exit 2, as the main parser.
    add(one, cls)
  return parser


def build_spec(spec, args: argparse.Namespace):
  """The tree `parser_for(spec)` parsed into `args`: for sub-commands, the chosen one's."""
  if not isinstance(spec, Mapping):
    return build(spec, args)
  return build(spec[getattr(args, _COMMAND)][0], args)


def parse(spec, argv: Sequence[str], parser: argparse.ArgumentParser | None = None):
  """`spec`'s tree from a command line (tests; scripts go through `cli.run`)."""
  p = parser_for(spec, parser or argparse.ArgumentParser())
  return build_spec(spec, p.parse_args(list(argv)))
