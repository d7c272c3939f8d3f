"""Every decision a script makes from its flags, the project and its checkpoints: one step.

A numbered script's `main` calls `resolve(config, project, ...)` once, before any
heavy work, and works from the `Resolved` it returns:

- **the models:** which files load (`-m`, a script's own checkpoint argument, or
  `--model` when it names a file; none for a preset, whose files are in `cache/`);
- **the threshold:** `--threshold`, else `--pick-threshold`, else what the judged
  checkpoints store when they agree, else 0.5 (`configs.EvalConfig.decided`:
  the one function that decides it, given the stored values read here);
- **the paths:** where the data's images are (`--root`, else a split's recorded
  root, else `dataset/` for a file inside it, else the file's own folder), the
  checkpoint a trainer writes (`-w NAME`: checkpoints/NAME.npz; `-s`: a path or
  a name), and every file the model is loaded from (which no output may replace);
- **the caches:** the project's `cache/` (weights of presets, the frozen
  encoder's image tokens, compiled programs: `cli.run` points jax's persistent
  compilation cache there before `main` starts).

A script's config names its concerns by field name, and this module finds them:
`load` (configs.LoadConfig), `eval` (configs.EvalConfig), `judge`
(configs.JudgeConfig), `audit` (data.audit.AuditConfig), `root` and `eval_set`.
The checkpoint a trainer writes is passed as a `Save` (its flag, value and rule).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, NamedTuple, Sequence

from palijudge import cli, configs, files
from palijudge.errors import UserError
from palijudge.files import Project

Log = Callable[[str], None]


class Save(NamedTuple):
  """A checkpoint a trainer writes: `value` is a name under checkpoints/ (NAME.npz), or with
  `any_path` also a path (with a / or .npz, from the cwd, ending in .npz)."""
  flag: str
  value: str | None
  any_path: bool = False


@dataclasses.dataclass(frozen=True)
class Resolved:
  """What `resolve` decided. `models` and `eval` are decided at once; reading data and
  loading models are methods, because they are the work the decisions are for."""
  cfg: Any
  project: Project
  models: tuple[str, ...]            # Model files to load, found in the project; () = the preset.
  eval: configs.EvalConfig | None    # The script's EvalConfig, its threshold decided.
  save_to: str | None                # The checkpoint this run writes (03 -w, 15 -s), if any.

  @property
  def cache(self) -> str:
    """The project's cache/: preset weights, the feature cache, compiled programs."""
    return str(self.project.cache)

  def root(self, of: str | os.PathLike | None = None) -> str:
    """Where image paths start, the one rule for every script: --root (-i) when given, else
    the root of `of` (a data file or a split's folder: data.splits.root_of), else the
    project's dataset/ folder."""
    if getattr(self.cfg, "root", None):
      return self.project.find(self.cfg.root)
    if of is None:
      return str(self.project.dataset)
    from palijudge.data import splits
    return splits.root_of(of, self.project.dataset)

  def read(self, path: str) -> list:
    """The examples of the data file `path` (found in the project), images at `root(path)`."""
    from palijudge.data import examples
    found = self.project.find(path)
    return examples.read_examples(found, self.root(found))

  def eval_sets(self, taken: Sequence[str] = ()) -> dict:
    """{NAME: examples} of every --eval-set NAME=FILE (images: `root` of each file)."""
    out: dict = {}
    for spec in getattr(self.cfg, "eval_set", ()):
      name, sep, path = spec.partition("=")
      name, path = name.strip(), path.strip()
      if not sep or not name or not path:
        raise UserError(f"--eval-set {spec!r}: expected NAME=FILE, e.g. safe=dataset/safe.jsonl")
      if name in out or name in taken:
        raise UserError(f"--eval-set {name}: the name is already used; pick another")
      out[name] = self.read(path)
    return out

  def inputs(self) -> list[tuple[str, str]]:
    """(what, file) of every file the models are loaded from: weights, a delta's base, the
    tokenizer, a probe's encoder. Read before any work, so an output that is one of them is
    refused at once (`files.check_writable(..., inputs)`)."""
    from palijudge import loader
    from palijudge.evaluation import probe
    lcfg = self.cfg.load
    out = [("the --base checkpoint", self.project.find(lcfg.base))] if lcfg.base else []
    for path in self.models or [model_file(lcfg.model, self.project) or lcfg.model]:
      if probe.is_probe(path):
        fitted = probe.load(path)
        out += [("the probe file", path), ("the probe's encoder", fitted.encoder)]
        out += [("the probe's base", fitted.base)] if fitted.base else []
        continue
      out += loader.resolve(path, lcfg.model_config, lcfg.tokenizer, self.cache,
                            lcfg.base).inputs
    return out

  def load(self, trainable: str = "attn", tcfg=None):
    """The model (the first of `models`, else the --model preset), said where it runs first.
    With `tcfg` (a training run) the parameters go straight to the training placement over
    every process's devices."""
    import jax
    from palijudge import loader
    lcfg = self.cfg.load
    policy = "fsdp" if tcfg is not None and tcfg.fsdp and lcfg.mesh == "auto" else None
    path = self.models[0] if self.models else model_file(lcfg.model, self.project)
    lm = loader.load_model(lcfg, self.cache, trainable, path,
                           devices=jax.devices() if tcfg is not None else None, policy=policy)
    cli.announce(lm, tcfg)
    return lm

  def judge(self):
    """ensemble.Judge of `models`: the --model, one checkpoint, an ensemble or a probe."""
    from palijudge.evaluation import ensemble
    judge = getattr(self.cfg, "judge", None)
    out = ensemble.load_judge(list(self.models), self.cfg.load, self.cache, self.eval,
                              judge.ensemble if judge else "mean")
    cli.announce(out.lm)
    return out

  def audit(self, sets: dict, root: str | None = None):
    """data.audit.find over {NAME: examples} with `cfg.audit` and the decisions file
    (--decisions, else dataset/audit-decisions.tsv when it exists; its image paths resolve
    against `root`, the sets' root, default `self.root()`); loads the model for --embeddings."""
    from palijudge.data import audit, decisions
    acfg = self.cfg.audit
    path = (self.project.find(acfg.decisions) if acfg.decisions else
            str(self.project.dataset / decisions.FILE_NAME))
    decided = (decisions.read(path, root or self.root())
               if acfg.decisions or os.path.isfile(path) else decisions.NONE)
    embed = None
    if acfg.embeddings:
      from palijudge import loader
      lm = self.load()
      features = loader.encoder_cache(lm, "first")  # Frozen encoder: cached on disk.
      embed = lambda exs: features.pooled(exs, lm.cfg.image_size)  # noqa: E731
    return audit.find(sets, acfg, embed, decided, path)


def resolve(cfg, project: Project, models: Sequence[str | None] | None = None, *,
            judges: bool = True, save: Save | None = None, log: Log = print) -> Resolved:
  """Decides, for the script whose config is `cfg`: the models, the threshold, the output.

  `models`: the script's own checkpoint arguments (found in the project; a None is left
  out), else `-m`/`--checkpoint` (a judge's), else `--model` when it names a file.
  `judges`: whether the threshold may come from what those checkpoints store (False for a
  trainer: the model it starts from does not judge). `save`: the checkpoint it writes.
  `log` hears the threshold's warning.
  """
  load = getattr(cfg, "load", None)
  if models is not None:
    found = [project.find(m) for m in models if m]
  elif getattr(cfg, "judge", None) is not None:
    named = cfg.judge.paths or ([load.model] if load.model.endswith(".npz") else [])
    found = [project.find(p) for p in named]
  else:
    found = [model_file(load.model, project)] if load is not None else []
  found = tuple(str(p) for p in found if p)
  ecfg = getattr(cfg, "eval", None)
  if ecfg is not None:
    from palijudge import checkpoint
    judged = found or ([project.find(load.model)] if load is not None else [])
    stored = [checkpoint.stored_threshold(p) for p in judged] if judges else []
    ecfg = ecfg.decided(stored, log)
  return Resolved(cfg, project, found, ecfg, _save_to(save, project) if save else None)


def model_file(name: str, project: Project) -> str | None:
  """--model as a file, found in the project: a .npz, or a folder (a transformers
  checkpoint); None for a preset's name (its files are in cache/)."""
  found = project.find(name)
  return found if name.endswith(".npz") or os.path.isdir(found) else None


def _save_to(save: Save, project: Project) -> str | None:
  if not save.value:
    return None
  if save.any_path and ("/" in save.value or os.sep in save.value or save.value.endswith(".npz")):
    if not save.value.endswith(".npz"):
      raise UserError(f"{save.flag} {save.value!r}: a checkpoint path must end in .npz")
    return os.path.abspath(save.value)
  return str(files.inside(save.value + ".npz", project.checkpoints, save.flag))
