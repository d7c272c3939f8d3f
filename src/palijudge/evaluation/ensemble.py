"""What judges the examples: the base model, one checkpoint, an ensemble, or a probe.

`-m` names one checkpoint, several (repeated, or a comma list: an ensemble),
or a probe file (recognised by its content, see `probe`). An ensemble scores
every example with every member and combines their p(yes) per example:
`mean`, or `min` (the cautious judge: `yes` only when every member says so
at the threshold). Members run over the same batches in the same order, each
with its own tokenizer and image size; images are decoded once for all of
them (a shared PixelCache). Deltas over one base share the base's arrays, so
an ensemble of N attention deltas costs the base once plus N small deltas;
members with the same config reuse one compiled model. Ensembles combine
p(yes), so they need --mode score.

The ensemble's threshold: --threshold, else the one the members store if
they all agree, else 0.5 with a warning line (`configs.EvalConfig.decided`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Sequence

import numpy as np

from palijudge import files, loader, quantize
from palijudge.evaluation import probe as probe_lib
from palijudge.configs import COMBINE  # noqa: F401
from palijudge.data.batch import PixelCache
from palijudge.errors import UserError, where
from palijudge.configs import EvalConfig
from palijudge.evaluation.scoring import Scorer, iter_scores
from palijudge.loader import LoadConfig, LoadedModel

Log = Callable[[str], None]


def combine(p_MxN: Sequence[np.ndarray], how: str) -> np.ndarray:
  """(N,) float32 p(yes) from M members' (N,) arrays.

  The mean is taken in float64, so identical members give back their own
  float32 values exactly.
  """
  if how not in COMBINE:
    raise UserError(f"--ensemble must be one of {', '.join(COMBINE)}, got {how!r}")
  p = np.stack([np.asarray(a, np.float64) for a in p_MxN])
  return (p.mean(axis=0) if how == "mean" else p.min(axis=0)).astype(np.float32)


def scorer(members: Sequence[LoadedModel], how: str) -> Scorer:
  """An `scoring.Scorer` combining the members' p(yes) batch by batch (one member: its own)."""
  if len(members) == 1:
    return functools.partial(iter_scores, members[0])

  def scores(examples, ecfg: EvalConfig, cache: PixelCache | None = None, _features=None):
    if ecfg.mode != "score":
      raise UserError("an ensemble combines p(yes) and needs --mode score")
    shared = cache if cache is not None else PixelCache()
    streams = [iter_scores(m, examples, ecfg, shared) for m in members]
    for parts in zip(*streams, strict=True):
      chunk = parts[0][0]
      yield chunk, combine([p for _, p, _ in parts], how), [""] * len(chunk)
  return scores


@dataclasses.dataclass(frozen=True)
class Judge:
  """A loaded judge: `scorer` for reports.report / infer.run, `lm` for the rest."""
  lm: LoadedModel        # The model (an ensemble's first member; a probe's encoder model).
  scorer: Scorer
  name: str              # What judges, for prediction files' settings.
  members: tuple[LoadedModel, ...] = ()  # Every model it loaded.
  probe_file: str | None = None

  def identity(self) -> str:
    """The sha256 of every file that decides its scores (weights, a delta's base, the
    tokenizer, a probe) and the weights' quantization: what a resumed prediction file must
    have been written by."""
    probe = [files.sha256(self.probe_file)] if self.probe_file else []
    return "+".join(probe + [f"{m.weights_id}+{files.sha256(m.spec.tokenizer)}"
                             for m in self.members])


def load_members(paths: Sequence[str], lcfg: LoadConfig, cache_dir: str) -> list[LoadedModel]:
  """Each checkpoint loaded; deltas over one base share it."""
  bases: dict = {}
  return [loader.load_model(lcfg, cache_dir, model=path, bases=bases) for path in paths]


def _probe_judge(path: str, lcfg: LoadConfig, cache_dir: str, ecfg: EvalConfig) -> Judge:
  """A probe over the encoder of the model it was fitted on (its file, else --model)."""
  probe_lib.check_config(ecfg, f"{where(path)} is a probe, which")
  fitted = probe_lib.load(path)
  model = fitted.encoder if os.path.isfile(fitted.encoder) else lcfg.model
  base = fitted.base if fitted.base and os.path.isfile(fitted.base) else lcfg.base
  lm = loader.load_model(dataclasses.replace(lcfg, base=base), cache_dir, model=model)
  probe_lib.check_model(fitted, lm)
  features = probe_lib.encoder_features(lm, ecfg.gif_frame)
  return Judge(lm, probe_lib.scorer(fitted, features), path, (lm,), path)


def _name(lm: LoadedModel) -> str:
  """The weights file, and how it was quantized (shown in prediction files' settings)."""
  return lm.spec.weights + quantize.id_suffix(lm.quantize)


def load_judge(paths: Sequence[str], lcfg: LoadConfig, cache_dir: str, ecfg: EvalConfig,
               how: str = "mean") -> Judge:
  """The judge `paths` name: none = the --model itself, one checkpoint, several, or a probe."""
  if not paths:
    lm = loader.load_model(lcfg, cache_dir)
    return Judge(lm, functools.partial(iter_scores, lm), _name(lm), (lm,))
  probes = [p for p in paths if probe_lib.is_probe(p)]
  if probes and len(paths) > 1:
    raise UserError(f"{where(probes[0])}: a probe file judges alone; it cannot be an "
                    f"ensemble member")
  if probes:
    return _probe_judge(paths[0], lcfg, cache_dir, ecfg)
  if len(paths) > 1 and ecfg.mode != "score":
    raise UserError("an ensemble combines p(yes) and needs --mode score")
  if how not in COMBINE:
    raise UserError(f"--ensemble must be one of {', '.join(COMBINE)}, got {how!r}")
  members = load_members(paths, lcfg, cache_dir)
  name = " + ".join(_name(m) for m in members)
  return Judge(members[0], scorer(members, how), name + (f" ({how})" if len(paths) > 1 else ""),
               tuple(members))
