"""Hyper-parameter search on ~10 trials a week (Optuna), resumable across days: the baseline
first, then TPE; per-fold values prune bad trials; a trial that raises is FAIL, the rest go on.

Several workers (one per GPU) may share one study in SQLite or PostgreSQL: concurrent first
workers retry the schema creation, the planned trials are enqueued once, and a trial whose
worker stops sending heartbeats (killed, host lost) becomes FAIL and is run again."""

from __future__ import annotations

import dataclasses
import os
import math
import random
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
import sqlalchemy
import yaml
from optuna.storages._heartbeat import get_heartbeat_thread  # what study.optimize uses
from optuna.trial import FrozenTrial, TrialState

from palijudge.configs import (DEFAULT_MODEL, DEFAULT_PROMPT, DEFAULT_STUDY, GRACE_S,  # noqa: F401
                               HEARTBEAT_S, NOT_FIXABLE)
from palijudge.experiments import cv
from palijudge.experiments.cv import METRICS
from palijudge.losses import LossConfig
from palijudge.train import TrainConfig
from palijudge.errors import UserError, where
from palijudge import files
from palijudge.experiments.records import RunRecord

DEFAULT_STORAGE = "study.db"  # Under the experiments folder.
STARTUP_TRIALS = 3
# A trial without a heartbeat for GRACE_S (configs) is re-enqueued, MAX_RETRIES times.
MAX_RETRIES = 2
STALE_REASON = "no heartbeat: its worker stopped (killed, or its host lost)"
OPEN_TRIES = 6  # concurrent first workers racing on schema creation: retries with jitter
PLAN_WAIT_S = 30.0  # how long other workers wait for the first one to enqueue the plan


def _defaults() -> dict[str, Any]:
  """03-do_learn.py's defaults, read off the configs (a space's baseline overrides them)."""
  t, loss = TrainConfig(), LossConfig()
  return {"lr": t.lr, "steps": t.steps, "batch": t.batch_size, "accum": t.accum,
          "trainable": t.trainable, "optimizer": t.optimizer, "loss": loss.kind,
          "focal_alpha": loss.focal_alpha,
          "focal_gamma": loss.focal_gamma, "bce_weight": loss.bce_weight,
          "focal_weight": loss.focal_weight, "label_smoothing": loss.label_smoothing,
          "prompt": DEFAULT_PROMPT}


DEFAULTS: dict[str, Any] = _defaults()
# 03-do_learn.py's flags a search may fix for every trial (`run --optimizer adam`), by
# configuration key (cv.config_keys); not --seed (06's is the sampler's) nor those about a
# saved checkpoint (trials save none).
FIXABLE = {k: cf for k, cf in cv.config_keys().items() if cf[1].name not in NOT_FIXABLE}
FIXED_DEFAULTS = {k: f.default for k, (_, f) in FIXABLE.items()}
FLAGS = {k: "--" + k.replace("_", "-") for k in {**DEFAULTS, **FIXED_DEFAULTS}}
DEFAULT_SPACE_YAML = """\
metric: f_measure   # the CV score: accuracy | precision | recall | f_measure | auc
baseline: {loss: combined, focal_alpha: 1.0, focal_gamma: 3.0, bce_weight: 0.5, focal_weight: 0.5}
params:
  lr: {low: 0.005, high: 0.1, log: true}
  focal_alpha: {low: 0.25, high: 1.0, step: 0.25, when: {loss: [focal, combined]}}
  focal_gamma: {low: 0.0, high: 5.0, step: 0.5, when: {loss: [focal, combined]}}
  bce_weight: {low: 0.0, high: 1.0, step: 0.1, when: {loss: [combined]}}
  focal_weight: {complement: bce_weight, when: {loss: [combined]}}
"""


@dataclasses.dataclass(frozen=True)
class Param:
  """One setting of the space; `spec` is its YAML mapping ({"value": v} when fixed)."""
  name: str
  kind: str  # fixed | categorical | float | int | complement
  spec: dict[str, Any]
  when: tuple[tuple[str, tuple], ...] = ()


@dataclasses.dataclass(frozen=True)
class Space:
  metric: str
  params: tuple[Param, ...]
  baseline: dict[str, Any]
  enqueue: tuple[dict[str, Any], ...]
  pruning: dict[str, float] | None


def _param(name: str, spec: Any, seen: set[str], at: str) -> Param:
  if not isinstance(spec, dict):
    return Param(name, "fixed", {"value": spec})
  when = spec.get("when") or {}
  if not isinstance(when, dict) or not set(when) | {spec.get("complement", name)} <= seen | {name}:
    raise UserError(f"{at}: {name}: `when`/`complement` may name earlier or unsearched params")
  cond = tuple((k, tuple(v if isinstance(v, list) else [v])) for k, v in when.items())
  if "complement" in spec:
    return Param(name, "complement", spec, cond)
  if isinstance(spec.get("choices"), list) and spec["choices"]:
    return Param(name, "categorical", spec, cond)
  low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log"))
  nums = all(isinstance(v, (int, float)) and not isinstance(v, bool)
             for v in (low, high, step or 1))
  if not (nums and low < high and (low > 0 or not log) and (step or 1) > 0):
    raise UserError(f"{at}: {name} needs a fixed value, non-empty choices, a complement, or "
                    f"low < high (low > 0 with log; step > 0)")
  ints = all(isinstance(v, int) for v in (low, high, step or 1)) or spec.get("type") == "int"
  return Param(name, "int" if ints and spec.get("type") != "float" else "float", spec, cond)


def _active(p: Param, cfg: dict[str, Any]) -> bool:  # searched, and its `when` holds
  return p.kind in ("categorical", "int", "float") and all(cfg[k] in v for k, v in p.when)


def _fits(p: Param, v: Any) -> bool:
  return v in p.spec["choices"] if p.kind == "categorical" else (
      isinstance(v, (int, float)) and p.spec["low"] <= v <= p.spec["high"])


def parse_space(doc: Any, source: str = "<space>") -> Space:
  """Space from a parsed YAML document; UserError naming `source` when invalid."""
  if not isinstance(doc, dict) or not isinstance(doc.get("params", {}), dict):
    raise UserError(f"{source}: expected a mapping with `params:`")
  unknown = sorted(set(doc) - {"metric", "baseline", "enqueue", "pruning", "params"})
  bad = sorted((set(doc.get("params") or {}) | set(doc.get("baseline") or {})) - set(DEFAULTS))
  if unknown or bad:
    raise UserError(f"{source}: unknown keys {unknown + bad}; params are {', '.join(DEFAULTS)}")
  metric = doc.get("metric", "f_measure")
  if metric not in METRICS:
    raise UserError(f"{source}: metric must be one of {', '.join(METRICS)}")
  names = list(doc.get("params") or {})  # `when` may name earlier params and unsearched ones
  params = [_param(n, doc["params"][n], set(names[:i]) | set(DEFAULTS) - set(names), source)
            for i, n in enumerate(names)]
  baseline = {**DEFAULTS, **(doc.get("baseline") or {})}
  baseline.update({p.name: p.spec["value"] for p in params if p.kind == "fixed"})
  _check_choices(params, baseline, source)
  enqueue = doc.get("enqueue") or []
  if not all(isinstance(e, dict) and set(e) <= set(DEFAULTS) for e in list(enqueue)):
    raise UserError(f"{source}: enqueue must be a list of mappings of params")
  pruning = doc.get("pruning", {})
  pruning = None if pruning is False else {"keep_top_percent": 75.0,
                                           "startup_trials": STARTUP_TRIALS, **(pruning or {})}
  for cfg in [baseline] + [{**baseline, **e} for e in enqueue]:
    for p in (p for p in params if _active(p, cfg) and not _fits(p, cfg[p.name])):
      raise UserError(f"{source}: baseline/enqueue {p.name}={cfg[p.name]!r} is outside its "
                      f"search space (set `baseline: {{{p.name}: ...}}`)")
  return Space(metric, tuple(params), baseline, tuple(enqueue), pruning)


def _check_choices(params: list[Param], baseline: dict[str, Any], source: str) -> None:
  """Values outside their flag's choices (an optimizer train.make_optimizer lacks, ...)."""
  for name, values in [(p.name, p.spec.get("choices") or []) for p in params] + [
      (k, [v]) for k, v in baseline.items()]:
    allowed = FIXABLE[name][1].metadata["option"]["choices"] if name in FIXABLE else None
    bad = [v for v in values if allowed and v not in allowed]
    if bad:
      raise UserError(f"{source}: {name} {bad[0]!r} is not one of {', '.join(allowed)}")


def load_space(path: str | Path | None = None) -> Space:
  """The space in a YAML file (None: DEFAULT_SPACE_YAML)."""
  if path is None:
    return parse_space(yaml.safe_load(DEFAULT_SPACE_YAML), "default space")
  if not Path(path).is_file():
    raise UserError(f"{where(path)}: search space file not found")
  try:
    return parse_space(yaml.safe_load(Path(path).read_text(encoding="utf-8")), where(path))
  except yaml.YAMLError as e:
    raise UserError(f"{where(path)}: invalid YAML ({' '.join(str(e).split())})") from None


def suggest(trial: optuna.trial.BaseTrial, space: Space) -> dict[str, Any]:
  """The trial's flat config: every DEFAULTS key; inactive params keep the baseline."""
  cfg = dict(space.baseline)
  rounded = lambda v: float(f"{v:.12g}")  # 0.30000000000000004 -> 0.3
  for p, s in ((p, p.spec) for p in space.params):
    if any(cfg[k] not in vals for k, vals in p.when):
      continue
    if p.kind == "fixed":
      cfg[p.name] = s["value"]
    elif p.kind == "complement":
      cfg[p.name] = rounded(1.0 - float(cfg[s["complement"]]))
    elif p.kind == "categorical":
      cfg[p.name] = trial.suggest_categorical(p.name, list(s["choices"]))
    elif p.kind == "int":
      cfg[p.name] = trial.suggest_int(p.name, int(s["low"]), int(s["high"]),
                                      step=int(s.get("step") or 1), log=bool(s.get("log")))
    else:
      cfg[p.name] = rounded(trial.suggest_float(p.name, float(s["low"]), float(s["high"]),
                                                log=bool(s.get("log")), step=s.get("step")))
  return cfg


@dataclasses.dataclass(frozen=True)
class Target:
  """What every trial of a study trains and scores: the base model, its quantization, the CV
  folds and metric (recorded in the study), and the dataset root (`--root`, None: the
  project's dataset/)."""
  model: str | None = None  # None: DEFAULT_MODEL, or the study's
  cv: str | None = None
  metric: str = "f_measure"
  root: str | None = None
  quantize: str | None = None  # --quantize; None: as the model's checkpoint records
  fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # fixed_flags; {}: the study's


def to_command(config: dict[str, Any], target: Target = Target(),
               script: str = "playground/03-do_learn.py") -> str:
  """The 03-do_learn.py command line that trains `config` (shell-quoted): the model first,
  then the folds, and every setting that differs from 03-do_learn.py's defaults."""
  args = ["python", script, "--model", target.model or DEFAULT_MODEL]
  args += ["--cv", target.cv] if target.cv else []
  args += ["--cv-metric", target.metric] if target.cv and target.metric != "f_measure" else []
  args += ["--root", target.root] if target.root else []
  args += ["--quantize", target.quantize] if target.quantize else []
  defaults = {**FIXED_DEFAULTS, **DEFAULTS}
  for key in (k for k in FLAGS if k in config and config[k] != defaults[k]):
    args += [FLAGS[key]] + _flag_value(config[key])
  return shlex.join(args)


def _flag_value(value: Any) -> list[str]:
  if isinstance(value, bool):  # A store_true flag: given (True) or not.
    return []
  if isinstance(value, (list, tuple)):  # --class-weight W_YES,W_NO
    return [",".join(str(v) for v in value)]
  return [repr(value) if isinstance(value, float) else str(value)]


def fixed_flags(given: dict[str, Any]) -> dict[str, Any]:
  """{key: value} of the fixed flags given ({field name: value}: 06-tune.py's `given_only`
  groups of 03-do_learn.py's flags), as the study stores them."""
  return {k: list(given[f.name]) if isinstance(given[f.name], tuple) else given[f.name]
          for k, (_, f) in FIXABLE.items() if f.name in given}


def with_fixed(space: Space, fixed: dict[str, Any]) -> Space:
  """The space with `fixed` in its baseline, for every trial. Refused (before any trial)
  where the space searches or fixes that setting otherwise, or where the baseline with them
  is no recipe (a focal parameter with --loss ce, ...)."""
  for p in (p for p in space.params if p.name in fixed):
    if p.kind != "fixed" or p.spec["value"] != fixed[p.name]:
      raise UserError(f"{FLAGS[p.name]} {_shown_value(fixed[p.name])}: the search space "
                      f"{'searches' if p.kind != 'fixed' else 'fixes'} {p.name}; drop the flag "
                      f"or {p.name} from the space")
  baseline = {**space.baseline, **fixed}
  cv.trial_config(baseline)  # UserError where the flags make no recipe
  cv.learn_config(baseline)
  return dataclasses.replace(space, baseline=baseline)


def _shown_value(value: Any) -> str:
  return " ".join(_flag_value(value)) or "(given)"


def fixed_text(fixed: dict[str, Any]) -> str:
  """`--optimizer adam --two-stage`, or `no fixed flags`."""
  return shlex.join(a for k, v in fixed.items() for a in [FLAGS[k]] + _flag_value(v)) \
      or "no fixed flags"


def bind(study: optuna.Study, target: Target) -> Target:
  """`target` checked against the study's model, quantization, CV set and metric (recorded by
  its first run or ask; an unset model, quantization or CV set is taken from the study): scores
  on other folds, of another model or weights, or by another metric would not compare, so a
  mismatch is refused."""
  attrs = study.user_attrs
  fixed = _bind_fixed(study, target.fixed)
  model = os.path.normpath(target.model) if target.model else attrs.get("model", DEFAULT_MODEL)
  cv = target.cv or attrs.get("cv")
  # "": as the checkpoint records (what a study made before --quantize existed ran), which
  # for an unquantized checkpoint is `none`; unset: the study's.
  quantize = attrs.get("quantize", "") if target.quantize is None else target.quantize
  quantize = "" if quantize == "none" else quantize
  recorded = {**attrs, "quantize": attrs.get("quantize", "" if "model" in attrs else None)}
  for key, value in (("model", model), ("quantize", quantize), ("cv", cv),
                     ("metric", target.metric)):
    if recorded.get(key) not in (None, value):
      weights = f" quantized {recorded['quantize']}" if recorded["quantize"] else ""
      raise UserError(f"study {study.study_name!r} searches {attrs.get('model')}{weights} on "
                      f"{attrs.get('cv')} by {attrs.get('metric', 'f_measure')}, not {key} "
                      f"{value or 'as recorded'}: use its --model/--quantize/--cv/space, "
                      "or another --study")
    if value is not None and key not in attrs:
      study.set_user_attr(key, value)
  if "fixed" not in attrs:
    study.set_user_attr("fixed", fixed)
  return dataclasses.replace(target, model=model, cv=cv, quantize=quantize or None,
                             fixed=fixed)


def _bind_fixed(study: optuna.Study, given: dict[str, Any]) -> dict[str, Any]:
  """The fixed flags of the study's trials: those given, else the study's; a resumed study
  given others is refused (its trials would not compare). A study made before fixed flags
  existed fixed none."""
  attrs = study.user_attrs
  recorded = attrs.get("fixed", {} if "model" in attrs else None)
  fixed = given or recorded or {}
  if recorded is not None and fixed != recorded:
    raise UserError(f"study {study.study_name!r} trains every trial with "
                    f"{fixed_text(recorded)}, not {fixed_text(fixed)}: give its flags (or "
                    "none), or another --study")
  return fixed


def storage_url(storage: str | None, root: str | os.PathLike = "experiments") -> str:
  """The SQLAlchemy URL of a --storage value: a file path is SQLite (default root/study.db);
  plain postgresql:// (or postgres://) URLs use the installed driver, psycopg 3."""
  url = storage or os.path.join(root, DEFAULT_STORAGE)
  scheme, sep, rest = url.partition("://")
  if not sep:
    return f"sqlite:///{url}"
  return f"postgresql+psycopg://{rest}" if scheme in ("postgresql", "postgres") else url


def _racing(err: BaseException) -> bool:
  """Errors of workers that create the same tables or study at the same moment."""
  text = str(err).lower()
  return isinstance(err, sqlalchemy.exc.IntegrityError) or (
      isinstance(err, sqlalchemy.exc.DBAPIError)
      and any(s in text for s in ("already exists", "duplicate", "database is locked")))


def _on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
  """A trial Optuna just marked FAIL for want of heartbeats: its params are enqueued again
  (MAX_RETRIES times at most) and its run record, when on this host, says why."""
  optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)
  path = trial.user_attrs.get("record")
  if path and Path(path).is_dir():
    record = RunRecord.load(path)
    record.write_eval("trial", {"number": trial.number, "state": "FAIL", "value": None,
                                "reason": STALE_REASON})
    record.close()


def _storage(url: str, heartbeat: int, grace: int) -> optuna.storages.RDBStorage:
  # SQLite: wait for another worker's write instead of failing at once ("database is locked").
  engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {
      "pool_pre_ping": True}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # heartbeats are "experimental" in Optuna
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                         grace_period=grace,
                                         heartbeat_stale_trial_callback=_on_stale)
  if url.startswith("sqlite"):
    _begin_immediate(storage.engine)
  return storage


def _begin_immediate(engine) -> None:
  """SQLite transactions take the write lock when they begin (BEGIN IMMEDIATE).

  A deferred transaction that reads and then writes while another worker writes gets
  "database is locked" at once: SQLite cannot wait there without risking a deadlock,
  so its busy timeout does not apply. Taken at BEGIN, the lock is simply waited for.
  """
  @sqlalchemy.event.listens_for(engine, "connect")
  def _no_implicit_begin(dbapi_connection, _record):
    dbapi_connection.isolation_level = None  # pysqlite's own BEGIN would be deferred

  @sqlalchemy.event.listens_for(engine, "begin")
  def _begin(connection):
    connection.exec_driver_sql("BEGIN IMMEDIATE")

  engine.dispose()  # Connections made before the listeners are dropped.


def _shown(url: str) -> str:  # a URL in messages, without its password
  try:
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
  except Exception:  # pylint: disable=broad-except  (not a URL: shown as given)
    return url


def _create(url: str, name: str, heartbeat: int, grace: int) -> optuna.Study:
  attempt = 0
  while True:
    try:
      return optuna.create_study(storage=_storage(url, heartbeat, grace), study_name=name,
                                 direction="maximize", load_if_exists=True)
    except ImportError:
      raise UserError(f"{_shown(url)}: no database driver: pip install -e '.[postgres]'"
                      ) from None
    except Exception as e:  # sqlalchemy/optuna errors: bad URL, unreachable server, ...
      attempt += 1
      if attempt == OPEN_TRIES or not _racing(e):
        raise UserError(f"{_shown(url)}: cannot open study {name!r}: {reason_of(e)}") from None
      time.sleep(random.uniform(0.05, 0.25) * 2 ** attempt)  # jitter: the racers drift apart


def open_study(storage: str | None = None, name: str = DEFAULT_STUDY,
               seed: int | None = None, root: str | os.PathLike = "experiments", *,
               heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S) -> optuna.Study:
  """Creates or reopens a maximizing study in a database URL or SQLite file path.

  Without `storage`, the study lives in `root`/study.db. Workers that create the schema or
  the study at the same moment retry with jitter (OPEN_TRIES times).
  """
  url = storage_url(storage, root)
  if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
    Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
  study = _create(url, name or DEFAULT_STUDY, heartbeat, grace)
  if study.direction != optuna.study.StudyDirection.MAXIMIZE:
    raise UserError(f"{_shown(url)}: study {name!r} minimizes; palijudge studies maximize "
                    "a CV score")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # multivariate/group are "experimental" in some versions
    study.sampler = optuna.samplers.TPESampler(
        n_startup_trials=STARTUP_TRIALS, multivariate=True, group=True, constant_liar=True,
        seed=None if seed is None else seed + len(study.trials))
  return study


def _claim(study: optuna.Study, what: str) -> bool:
  """True for exactly one caller per study and `what`, whichever worker or day it is.

  A study name is unique in the database, the one atomic test-and-set Optuna's storages
  offer, so the claim is an empty study `<name>.<what>` (no trials: reports skip it).
  """
  try:
    study._storage.create_new_study(  # pylint: disable=protected-access
        [optuna.study.StudyDirection.MAXIMIZE], f"{study.study_name}.{what}")
    return True
  except optuna.exceptions.DuplicatedStudyError:
    return False


def prepare(study: optuna.Study, space: Space, wait_s: float = PLAN_WAIT_S) -> None:
  """Enqueues the baseline, then the space's `enqueue` list, once per study, also when
  several workers start together: the others wait (up to `wait_s`) until the plan is in,
  so that the planned trials come first."""
  if study.user_attrs.get("baseline_enqueued"):
    return
  if _claim(study, "planned"):
    for cfg in ({**space.baseline, **extra} for extra in ({},) + space.enqueue):
      study.enqueue_trial({p.name: cfg[p.name] for p in space.params if _active(p, cfg)},
                          user_attrs={"planned": True})
    study.set_user_attr("baseline_enqueued", True)
    return
  end = time.monotonic() + wait_s
  while not study.user_attrs.get("baseline_enqueued") and time.monotonic() < end:
    time.sleep(0.1)


@dataclasses.dataclass(frozen=True)
class Outcome:
  number: int
  state: str  # COMPLETE | PRUNED | FAIL
  value: float | None
  config: dict[str, Any]
  reason: str = ""
  warning: str = ""


@dataclasses.dataclass
class Reporter:
  """report(fold, value); `.record` (RunRecord or None) is where fold records nest."""
  trial: optuna.Trial
  record: RunRecord | None = None
  metric: str = "f_measure"  # the space's CV metric: what the objective must return

  def __call__(self, fold: int, value: float) -> None:
    if not math.isfinite(float(value)):
      raise FloatingPointError(f"fold {fold}: non-finite score {value}")
    self.trial.report(float(value), step=int(fold))
    if self.trial.should_prune():
      raise optuna.TrialPruned(f"pruned after fold {fold} ({float(value):.4f})")

  def warn(self, text: str) -> None:
    """A caution about the score (every prediction one class, ...), kept with the trial."""
    self.trial.set_user_attr("warning", text)


def reason_of(err: BaseException) -> str:
  return f"{type(err).__name__}: {' '.join(str(err).split()) or '(no message)'}"[:300]


def _start(study: optuna.Study, space: Space, records_root: str | None, target: Target):
  # What study.optimize does around a trial, with ask/tell (Optuna warns: "experimental",
  # "heartbeat is supposed to be used with Study.optimize").
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    optuna.storages.fail_stale_trials(study)  # dead workers' trials: FAIL, enqueued again
    trial = study.ask()
  config = suggest(trial, space)
  command = to_command(config, target)
  for key, value in (("config", config), ("command", command), ("cv", target.cv)):
    trial.set_user_attr(key, value)
  record = RunRecord(records_root, f"{study.study_name}-trial-{trial.number:03d}") \
      if records_root else None
  if record:
    record.write_config({**config, "study": study.study_name, "trial": trial.number,
                         "metric": space.metric, "cv": target.cv, "model": target.model,
                         "command": command})
    trial.set_user_attr("record", str(record.path))
  return trial, config, record


def _heartbeat(study: optuna.Study, trial: optuna.Trial):
  """While open, a thread writes the trial's heartbeat (as in study.optimize)."""
  return get_heartbeat_thread(trial._trial_id, study._storage)  # pylint: disable=protected-access


def _finish(study: optuna.Study, trial, value, state, reason: str, record) -> Outcome:
  if reason:
    trial.set_user_attr("fail_reason" if state == TrialState.FAIL else "prune_reason", reason)
  frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
  if record is not None:
    record.write_eval("trial", {"number": trial.number, "state": frozen.state.name,
                                "value": frozen.value, "reason": reason})
    record.close()  # Its TensorBoard writer (a file and a thread): one per trial otherwise.
  return Outcome(trial.number, frozen.state.name, frozen.value, trial.user_attrs["config"],
                 reason, frozen.user_attrs.get("warning", ""))


def run_trials(study: optuna.Study, space: Space, objective: Callable[..., float], n: int, *,
               records_root: str | None = None, target: Target = Target(),
               log: Callable[[str], None] = print) -> list[Outcome]:
  """n trials of objective(config, report) -> score; one that raises is FAIL, the rest go on.

  While the objective runs, a thread writes the trial's heartbeat (see HEARTBEAT_S).
  """
  target = dataclasses.replace(target, metric=space.metric)
  space = with_fixed(space, target.fixed)  # the target's (bound) fixed flags, every trial
  prepare(study, space)
  keep = space.pruning
  study.pruner = optuna.pruners.PercentilePruner(  # bottom quarter pruned, fold by fold
      float(keep["keep_top_percent"]), n_startup_trials=int(keep["startup_trials"]),
      n_warmup_steps=0) if keep else optuna.pruners.NopPruner()
  outcomes = []
  for _ in range(n):
    trial, config, record = _start(study, space, records_root, target)
    log(f"trial {trial.number}: {trial.user_attrs['command']}")
    value, state, reason = None, TrialState.COMPLETE, ""
    try:
      with _heartbeat(study, trial):
        value = float(objective(config, Reporter(trial, record, space.metric)))
      if not math.isfinite(value):
        raise FloatingPointError(f"non-finite CV score {value}")
    except optuna.TrialPruned as e:
      state, reason = TrialState.PRUNED, str(e) or "pruned"
    except KeyboardInterrupt:
      _finish(study, trial, None, TrialState.FAIL, "interrupted", record)
      raise
    except Exception as e:  # OOM, divergence, bad data: recorded; the study goes on.
      state, reason = TrialState.FAIL, reason_of(e)
    out = _finish(study, trial, value, state, reason, record)
    log(f"trial {out.number}: {out.state} " + (f"{out.value:.4f}" if out.value is not None
                                                else "") + (f" ({reason})" if reason else ""))
    if out.warning:
      log(f"trial {out.number}: warning: {out.warning}")
    outcomes.append(out)
  return outcomes


def ask(study: optuna.Study, space: Space, records_root: str | None = None,
        target: Target = Target()) -> tuple[int, dict[str, Any], str]:
  """Starts the next trial (RUNNING until `tell`, without heartbeats: run by hand, it may
  take days); returns its number, config and 03-do_learn.py command line."""
  space = with_fixed(space, target.fixed)
  prepare(study, space)
  trial, config, record = _start(study, space, records_root,
                                 dataclasses.replace(target, metric=space.metric))
  command = trial.user_attrs["command"]
  if record is not None:  # The hand-run goes into the trial's own record: one row, not two.
    command += f" --record {shlex.quote(files.shown(record.path))}"
    trial.set_user_attr("command", command)
    record.write_config({"command": command}, merge=True)
  return trial.number, config, command


def tell(study: optuna.Study, number: int, score: float | None, reason: str = "") -> Outcome:
  """Records a CV score measured by hand (score None: the trial failed, `reason` why)."""
  found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
  if not found or found[0].state != TrialState.RUNNING:
    raise UserError(f"study {study.study_name}: trial {number} is "
                    f"{found[0].state.name if found else 'unknown'}, not waiting for a score")
  if score is not None and not math.isfinite(score):
    raise UserError(f"trial {number}: the score must be finite, got {score}")
  if score is not None and not 0 <= score <= 1:  # Every CV metric is a fraction (cv.METRICS).
    metric = study.user_attrs.get("metric", "f_measure")
    raise UserError(f"trial {number}: a CV {metric} lies in [0, 1], got {score}")
  trial = optuna.Trial(study, found[0]._trial_id)  # pylint: disable=protected-access
  path = found[0].user_attrs.get("record")
  record = RunRecord.load(path) if path and Path(path).is_dir() else None
  if score is None:
    return _finish(study, trial, None, TrialState.FAIL, reason or "failed", record)
  return _finish(study, trial, score, TrialState.COMPLETE, "", record)


def parse_score(text: str) -> float | None:
  """`tell`'s score: a number, or None for `fail`."""
  if text.lower() in ("fail", "failed"):
    return None
  try:
    return float(text)
  except ValueError:
    raise UserError(f"score must be a number or `fail`, got {text!r}") from None
