"""Hyper-parameter search on ~10 trials a week (Optuna), resumable across days: the baseline
first, then TPE; per-fold values prune bad trials; a trial that raises is FAIL, the rest go on."""

from __future__ import annotations

import dataclasses
import os
import math
import shlex
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
import yaml
from optuna.trial import TrialState

from palijudge.evaluate import DEFAULT_PROMPT
from palijudge.experiments.cv import METRICS
from palijudge.losses import LossConfig
from palijudge.train import TrainConfig
from palijudge.errors import UserError, where
from palijudge.experiments.records import RunRecord

DEFAULT_STORAGE = "study.db"  # Under the experiments folder.
DEFAULT_STUDY = "palijudge"
STARTUP_TRIALS = 3


def _defaults() -> dict[str, Any]:
  """03-do_learn.py's defaults, read off the configs (a space's baseline overrides them)."""
  t, loss = TrainConfig(), LossConfig()
  return {"lr": t.lr, "steps": t.steps, "batch": t.batch_size, "accum": t.accum,
          "trainable": t.trainable, "loss": loss.kind, "focal_alpha": loss.focal_alpha,
          "focal_gamma": loss.focal_gamma, "bce_weight": loss.bce_weight,
          "focal_weight": loss.focal_weight, "label_smoothing": loss.label_smoothing,
          "prompt": DEFAULT_PROMPT}


DEFAULTS: dict[str, Any] = _defaults()
FLAGS = {k: "--" + k.replace("_", "-") for k in DEFAULTS}
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


def to_command(config: dict[str, Any], cv: str | None = None,
               script: str = "playground/03-do_learn.py") -> str:
  """The 03-do_learn.py command line that trains `config` (shell-quoted)."""
  args = ["python", script] + (["--cv", cv] if cv else [])
  for key in (k for k in FLAGS if k in config):
    args += [FLAGS[key], repr(config[key]) if isinstance(config[key], float) else str(config[key])]
  return shlex.join(args)


def open_study(storage: str | None = None, name: str = DEFAULT_STUDY,
               seed: int | None = None, root: str | os.PathLike = "experiments") -> optuna.Study:
  """Creates or reopens a maximizing study in a database URL or SQLite file path.

  Without `storage`, the study lives in `root`/study.db.
  """
  url = storage or os.path.join(root, DEFAULT_STORAGE)
  url = url if "://" in url else f"sqlite:///{url}"
  if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
    Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
  try:
    study = optuna.create_study(storage=url, study_name=name or DEFAULT_STUDY,
                                direction="maximize", load_if_exists=True)
  except Exception as e:  # sqlalchemy/optuna errors: bad URL, unreachable server, ...
    raise UserError(f"{url}: cannot open study {name!r}: {reason_of(e)}") from None
  if study.direction != optuna.study.StudyDirection.MAXIMIZE:
    raise UserError(f"{url}: study {name!r} minimizes; palijudge studies maximize a CV score")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # multivariate/group are "experimental" in some versions
    study.sampler = optuna.samplers.TPESampler(
        n_startup_trials=STARTUP_TRIALS, multivariate=True, group=True, constant_liar=True,
        seed=None if seed is None else seed + len(study.trials))
  return study


def prepare(study: optuna.Study, space: Space) -> None:
  """Enqueues the baseline, then the space's `enqueue` list, once per study."""
  if study.user_attrs.get("baseline_enqueued"):
    return
  study.set_user_attr("baseline_enqueued", True)
  for cfg in ({**space.baseline, **extra} for extra in ({},) + space.enqueue):
    study.enqueue_trial({p.name: cfg[p.name] for p in space.params if _active(p, cfg)},
                        user_attrs={"planned": True})


@dataclasses.dataclass(frozen=True)
class Outcome:
  number: int
  state: str  # COMPLETE | PRUNED | FAIL
  value: float | None
  config: dict[str, Any]
  reason: str = ""


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


def reason_of(err: BaseException) -> str:
  return f"{type(err).__name__}: {' '.join(str(err).split()) or '(no message)'}"[:300]


def _start(study: optuna.Study, space: Space, records_root: str | None, cv: str | None):
  trial = study.ask()
  config = suggest(trial, space)
  for key, value in (("config", config), ("command", to_command(config, cv)), ("cv", cv)):
    trial.set_user_attr(key, value)
  record = RunRecord(records_root, f"{study.study_name}-trial-{trial.number:03d}") \
      if records_root else None
  if record:
    record.write_config({**config, "study": study.study_name, "trial": trial.number,
                         "metric": space.metric, "cv": cv, "command": to_command(config, cv)})
    trial.set_user_attr("record", str(record.path))
  return trial, config, record


def _finish(study: optuna.Study, trial, value, state, reason: str, record) -> Outcome:
  if reason:
    trial.set_user_attr("fail_reason" if state == TrialState.FAIL else "prune_reason", reason)
  frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
  if record is not None:
    record.write_eval("trial", {"number": trial.number, "state": frozen.state.name,
                                "value": frozen.value, "reason": reason})
  return Outcome(trial.number, frozen.state.name, frozen.value, trial.user_attrs["config"], reason)


def run_trials(study: optuna.Study, space: Space, objective: Callable[..., float], n: int, *,
               records_root: str | None = None, cv: str | None = None,
               log: Callable[[str], None] = print) -> list[Outcome]:
  """n trials of objective(config, report) -> score; one that raises is FAIL, the rest go on."""
  prepare(study, space)
  keep = space.pruning
  study.pruner = optuna.pruners.PercentilePruner(  # bottom quarter pruned, fold by fold
      float(keep["keep_top_percent"]), n_startup_trials=int(keep["startup_trials"]),
      n_warmup_steps=0) if keep else optuna.pruners.NopPruner()
  outcomes = []
  for _ in range(n):
    trial, config, record = _start(study, space, records_root, cv)
    log(f"trial {trial.number}: {to_command(config, cv)}")
    value, state, reason = None, TrialState.COMPLETE, ""
    try:
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
    outcomes.append(out)
  return outcomes


def ask(study: optuna.Study, space: Space, records_root: str | None = None,
        cv: str | None = None) -> tuple[int, dict[str, Any]]:
  """Starts the next trial (RUNNING until `tell`); returns its number and config."""
  prepare(study, space)
  trial, config, _ = _start(study, space, records_root, cv)
  return trial.number, config


def tell(study: optuna.Study, number: int, score: float | None, reason: str = "") -> Outcome:
  """Records a CV score measured by hand (score None: the trial failed, `reason` why)."""
  found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
  if not found or found[0].state != TrialState.RUNNING:
    raise UserError(f"study {study.study_name}: trial {number} is "
                    f"{found[0].state.name if found else 'unknown'}, not waiting for a score")
  if score is not None and not math.isfinite(score):
    raise UserError(f"trial {number}: the score must be finite, got {score}")
  trial = optuna.Trial(study, found[0]._trial_id)  # pylint: disable=protected-access
  path = found[0].user_attrs.get("record")
  record = RunRecord.load(path) if path and Path(path).is_dir() else None
  if score is None:
    return _finish(study, trial, None, TrialState.FAIL, reason or "failed", record)
  return _finish(study, trial, score, TrialState.COMPLETE, "", record)
