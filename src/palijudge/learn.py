"""The users' iteration (`03-do_learn.py`) as one library call: evaluate, train, evaluate, save.

`learn` evaluates all/train/valid (and any extra sets) before training, runs
`runs` independent trainings of one or two stages (the second at lr/10),
evaluates after each stage, keeps the run whose validation metric is best,
and saves its checkpoint atomically with the recipe, prompt and decision
threshold. It sits above `train` and `evaluate` and below the experiments:
run records are written through the small `Recorder` interface, which
`experiments.records.RunRecord` implements, so nothing here imports them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import time
from typing import Callable, Protocol, Sequence

import jax

from palijudge import checkpoint
from palijudge import files
from palijudge import metrics
from palijudge import params as params_lib
from palijudge import predictions
from palijudge import train as train_lib
from palijudge.data.batch import PixelCache
from palijudge.data.examples import Example
from palijudge.errors import UserError
from palijudge.evaluate import EvalConfig, EvalResult, report, shared_threshold
from palijudge.loader import LoadedModel
from palijudge.model import lora
from palijudge.options import option

Log = Callable[[str], None]
SELECT = ("precision", "f1", "accuracy", "recall", "auc")


@dataclasses.dataclass(frozen=True)
class LearnConfig:
  """What `03-do_learn.py` runs around the recipe: stages, the lottery, what is saved."""
  two_stage: bool = option(False, "second stage at lr/10 (the users' -2)", short="-2")
  runs: int = option(1, "independent runs (seeds S, S+1000, ...); the best by --select is saved")
  select: str = option("f1", "validation metric that picks the best run", choices=SELECT)
  full: bool = option(False, "save every parameter (big_vision-loadable), not a delta over "
                      "the base")
  resume: bool = option(False, "continue from checkpoints/NAME.state.npz if a killed run "
                        "left one")

  def __post_init__(self):
    if self.runs < 1:
      raise UserError("--runs must be >= 1")


class Recorder(Protocol):
  """Where a run's log, metrics and predictions go (experiments.records.RunRecord)."""

  def log_step(self, step: int, lr: float, loss: float, grad_norm: float | None = None,
               seconds: float | None = None) -> None: ...
  def write_eval(self, stage: str, metrics: dict) -> object: ...
  def write_predictions(self, rows) -> object: ...
  def plots(self) -> object: ...


@dataclasses.dataclass(frozen=True)
class LearnResult:
  lm: LoadedModel
  before: dict[str, EvalResult]
  after: dict[str, EvalResult]  # After the last stage of the best run.
  diverged: str = ""            # Why the kept run's training stopped early, if it did.


def selection_score(result: EvalResult, metric: str) -> float:
  """The validation metric `--runs` keeps the best run by (higher is better)."""
  c = result.confusion
  values = {"precision": c.precision, "f1": c.f_measure, "accuracy": c.accuracy,
            "recall": c.recall}
  if metric == "auc":
    auc = metrics.roc_auc(result.labels.tolist(), result.p_yes.tolist())
    return float("-inf") if auc is None else auc
  return values[metric]


@dataclasses.dataclass(frozen=True)
class _Run:
  """Everything one run needs besides the recipe (internal)."""
  sets: dict
  ecfg: EvalConfig
  lcfg: LearnConfig
  save_to: str | None
  record: Recorder | None
  cache: PixelCache
  features: object
  before: dict
  phases: Phases | _NoPhases


def _train_run(lm: LoadedModel, train: Sequence[Example], tcfg: train_lib.TrainConfig, run: int,
               r: _Run, log: Log) -> tuple[LoadedModel, dict[str, EvalResult], str]:
  """One run: 1 or 2 stages, evaluated after each. Returns (lm, after-results, diverged)."""
  state_path = r.save_to[:-len(".npz")] + ".state.npz" if r.save_to else None
  stages = [tcfg] + ([dataclasses.replace(tcfg, lr=tcfg.lr / 10)] if r.lcfg.two_stage else [])
  after, diverged = {}, ""
  for i, stage in enumerate(stages):
    log(f"training stage {i + 1}: lr {stage.lr:g}, batch {stage.batch_size}"
        f"{f' x {stage.accum}' if stage.accum > 1 else ''}, {stage.steps} steps, "
        f"trainable {stage.trainable}, {stage.optimizer}, seed {stage.seed}")
    fit_opts = train_lib.FitOptions(prompt=r.ecfg.prompt, gif_frame=r.ecfg.gif_frame,
                                    state_path=state_path, resume=r.lcfg.resume,
                                    stage=run * 2 + i)
    result = train_lib.fit(lm, train, stage, fit_opts, log=log, cache=r.cache,
                           features=r.features)
    r.phases.add("compilation", result.compile_seconds)
    r.phases.add("training", result.seconds - result.compile_seconds)
    if result.diverged:
      diverged = f"stage {i + 1}: {result.diverged}; kept step {result.kept_step}"
    if r.record:
      for row in result.history:
        r.record.log_step(*row)
    if i + 1 < len(stages):  # Stage 2 continues the seed that stage 1 ended with.
      stages[i + 1] = dataclasses.replace(stages[i + 1], seed=result.seed)
    lm = dataclasses.replace(lm, params=result.params,
                             model=lm.model.clone(lora_alpha=stage.lora_alpha))
    with r.phases("after_evaluation"):
      after = report(lm, r.sets, r.ecfg, ("1st", "2nd")[i] + " trained", log, r.cache,
                     r.features, baseline=r.before, strict=False)
  return lm, after, diverged


def learn(lm: LoadedModel, train: Sequence[Example], valid: Sequence[Example],
          tcfg: train_lib.TrainConfig, ecfg: EvalConfig, lcfg: LearnConfig = LearnConfig(), *,
          names: tuple[str, str, str], save_to: str | None = None,
          record: Recorder | None = None, extra_sets: dict | None = None,
          phases: Phases | None = None, log: Log = print) -> LearnResult:
  """03-do_learn: evaluate before, train (runs x stages), evaluate after, save the best.

  `names` are how all/train/valid are printed; `save_to` the checkpoint path;
  `phases`, if given, times each phase (evaluation, compilation, training, save).
  """
  ph = phases if phases is not None else _NoPhases()
  all_name, train_name, valid_name = names
  sets = {all_name: [train_name, valid_name], train_name: train, valid_name: valid,
          **(extra_sets or {})}
  if save_to:
    files.check_writable(save_to, "checkpoint")
    for name in files.sweep_stale(os.path.dirname(os.path.abspath(save_to))):
      log(f"removed {name}, left by a save that was killed")
  cache = PixelCache()
  # Image tokens are computed once per image when the encoder stays frozen.
  features = train_lib.feature_cache(lm, tcfg.trainable, ecfg.gif_frame)
  with ph("before_evaluation"):
    before = report(lm, sets, ecfg, "before training", log, cache, features, strict=False)
  r = _Run(sets, ecfg, lcfg, save_to, record, cache, features, before, ph)
  best = None
  for run in range(lcfg.runs):
    cfg = dataclasses.replace(tcfg, seed=tcfg.seed + 1000 * run)
    if lcfg.runs > 1:
      log(f"run {run + 1}/{lcfg.runs} (seed {cfg.seed})")
    run_lm, after, diverged = _train_run(lm, train, cfg, run, r, log)
    score = selection_score(after[valid_name], lcfg.select)
    if lcfg.runs > 1:
      log(f"run {run + 1}: valid {lcfg.select} = {score:.4f}")
    if best is None or score > best[0]:
      best = (score, run, run_lm, after, cfg, diverged)
  score, run, lm, after, cfg, diverged = best
  if lcfg.runs > 1:
    log(f"best run: {run + 1}/{lcfg.runs} (seed {cfg.seed}), valid {lcfg.select} = {score:.4f}")
  if save_to:  # With the threshold picked on a split, if one was.
    with ph("save"):
      save(lm, cfg, ecfg, lcfg, save_to, shared_threshold(after), diverged)
    log(f"saved {files.shown(save_to)}")
  if record:
    _write_record(record, before, after, valid_name)
  return LearnResult(lm, before, after, diverged)


def _write_record(record: Recorder, before, after, valid_name: str) -> None:
  for tag, results in (("before training", before), ("after training", after)):
    record.write_eval(tag, {os.path.basename(n): r.metrics() for n, r in results.items()})
  record.write_predictions(predictions.records_of(after[valid_name]))
  record.plots()


def save(lm: LoadedModel, tcfg: train_lib.TrainConfig, ecfg: EvalConfig, lcfg: LearnConfig,
         path: str, threshold: float, diverged: str = "") -> None:
  """The trained model: a delta over its base (or every parameter), with its recipe."""
  meta = {"diverged": diverged} if diverged else {}
  meta |= {"tokenizer": lm.spec.tokenizer, "base": lm.spec.weights, "prompt": ecfg.prompt,
          "train_config": dataclasses.asdict(tcfg), "two_stage": lcfg.two_stage,
          "threshold": threshold,
          "saved": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  base = lm.spec.base or lm.spec.weights
  if lcfg.full or params_lib.saves_everything(tcfg.trainable):
    checkpoint.save(path, lora.merge(lm.params, lm.model.lora_alpha), lm.cfg, meta)
  else:  # A delta: the trained leaves and the base's sha256.
    keep = params_lib.trainable_pattern(tcfg.trainable).search
    checkpoint.save_delta(path, lm.params, keep, lm.cfg, base, meta)
  state_path = path[:-len(".npz")] + ".state.npz"
  if os.path.exists(state_path):
    os.remove(state_path)  # The run finished: its periodic state is obsolete.


# --- Phase timing (03-do_learn.py --phases) ------------------------------------


def device_peak_bytes() -> int | None:
  """Highest `peak_bytes_in_use` over the local devices; None where not reported (CPU)."""
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # Backends without allocator statistics raise or return None.
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


@dataclasses.dataclass(frozen=True)
class Phase:
  """One timed phase.

  peak_bytes: the device's running peak at the phase's end (allocators keep
  one high-water mark per process, never reset); new_peak: whether it rose
  during this phase, i.e. whether the phase itself reached it.
  """
  name: str
  seconds: float
  peak_bytes: int | None
  new_peak: bool | None
  ok: bool = True  # False when the phase raised.


class Phases:
  """Records named phases in order: `with phases("training"): ...`.

  The body must wait for its device work (e.g. `float(loss)`), or the time
  lands in a later phase. Phases do not nest. `clock` and `peak` are injectable
  (tests); `peak` returns bytes or None.
  """

  def __init__(self, clock: Callable[[], float] = time.perf_counter,
               peak: Callable[[], int | None] = device_peak_bytes):
    self.clock, self.peak = clock, peak
    self.records: list[Phase] = []
    self._open: str | None = None

  @contextlib.contextmanager
  def __call__(self, name: str):
    if self._open is not None:
      raise RuntimeError(f"phase {name!r} started inside phase {self._open!r}")
    self._open, before, start, ok = name, self.peak(), self.clock(), False
    try:
      yield self
      ok = True
    finally:
      self.add(name, self.clock() - start, before, ok)
      self._open = None

  def add(self, name: str, seconds: float, peak_before: int | None = None,
          ok: bool = True) -> Phase:
    """Records a phase timed elsewhere (e.g. a compile time measured by AOT)."""
    after = self.peak()
    new = None if after is None or peak_before is None else after > peak_before
    rec = Phase(name, float(seconds), after, new, ok)
    self.records.append(rec)
    return rec

  @property
  def total_s(self) -> float:
    return sum(r.seconds for r in self.records)

  def as_dict(self, **extra) -> dict:
    return {**extra, "phases": [dataclasses.asdict(r) for r in self.records],
            "total_s": round(self.total_s, 3)}

  def json_line(self, **extra) -> str:
    return json.dumps(self.as_dict(**extra))

  def table(self) -> str:
    """A markdown table: phase, seconds, share of the total, device peak."""
    lines = ["| phase | seconds | share | device peak GiB |", "| --- | ---: | ---: | ---: |"]
    total = self.total_s or 1.0
    for r in self.records:
      peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2 ** 30:.2f}"
      mark = "" if r.ok else " (failed)"
      lines.append(f"| {r.name}{mark} | {r.seconds:.2f} | {100 * r.seconds / total:.0f}% | "
                   f"{peak}{' *' if r.new_peak else ''} |")
    lines.append(f"| total | {self.total_s:.2f} | 100% | |")
    if any(r.new_peak for r in self.records):
      lines.append("\n\\* the device's peak memory rose during this phase")
    return "\n".join(lines)


class _NoPhases:
  """Phases that records nothing (the default)."""

  def __call__(self, name: str):
    return contextlib.nullcontext(self)

  def add(self, name: str, seconds: float, peak_before: int | None = None, ok: bool = True):
    return None
