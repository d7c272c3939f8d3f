#!/usr/bin/env python3
"""Search 03-do_learn.py's settings on a budget (~10 trials a week), by CV score.

  ./06-tune.py run --trials 3 --cv cv5     # train 3 trials now; the study resumes next time
  ./06-tune.py ask --cv cv5                # the next configuration, as a command line
  ./06-tune.py tell 4 0.8123               # trial 4's CV score, measured by hand
  ./06-tune.py tell 4 fail --reason OOM    # ... or why it failed
  ./06-tune.py status                      # every trial, the best, this week's count
  ./06-tune.py space > space.yaml          # the default search space, to edit (--space)

The study lives in experiments/study.db (--storage: another file or a database URL such as
postgresql://USER@HOST:5432/DB, shared by several workers: one `run` per GPU). It records
its model, quantization, CV set, metric and fixed flags (run/ask --optimizer adam ..., any
of 03-do_learn.py's recipe flags), and refuses others. The first trial is the
space's baseline; then TPE after 3 random start-up trials. A `run` trial whose worker stops
sending heartbeats (--heartbeat) for --grace seconds is marked FAIL by the next worker and
run again.
"""

import dataclasses

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli, configs
from palijudge.resolve import resolve
from palijudge.options import group, option


@dataclasses.dataclass(frozen=True)
class Status:
  study: configs.StudyConfig = group(configs.StudyConfig, "the study")


@dataclasses.dataclass(frozen=True)
class Space(Status):
  pass


@dataclasses.dataclass(frozen=True)
class Tell(Status):
  trial: int = option(None, "trial number (from ask)", positional=1)
  score: str = option(None, "the CV score, or `fail`", positional=1)
  reason: str = option("", "why it failed (with `fail`)")


@dataclasses.dataclass(frozen=True)
class Ask(Status):
  cv: str | None = option(None, "fold splits the command line should use (default: the "
                          "study's)", suppress_default=True)
  model: str | None = option(None, "base model: preset or checkpoint (default: the study's, "
                             "else paligemma-3b-pt-224)", suppress_default=True)
  quantize: str | None = option(None, "quantize the model's frozen matrices, as 03's "
                                "--quantize (default: the study's, else as the checkpoint "
                                "records)", choices=configs.QUANTIZE_MODES,
                                suppress_default=True)
  root: str | None = cli.root_option()
  # 03-do_learn.py's recipe flags, fixed for every trial: only those given.
  fixed_train: dict = group(configs.TrainConfig, "training, fixed for every trial",
                            skip=configs.NOT_FIXABLE, given_only=True)
  fixed_learn: dict = group(configs.LearnConfig, "stages, fixed for every trial",
                            skip=configs.NOT_FIXABLE, given_only=True)

  @property
  def fixed(self) -> dict:
    return {**self.fixed_train, **self.fixed_learn}


@dataclasses.dataclass(frozen=True)
class Run(Ask):
  cv: str = option(None, "fold splits dataset/NAME (02 --folds K -n NAME)", required=True)
  trials: int = option(None, "how many trials to run now", required=True)

  def __post_init__(self):
    if self.trials < 1:
      raise cli.UserError(f"--trials must be >= 1, got {self.trials}")


COMMANDS = {"run": (Run, "train and score N trials now"),
            "ask": (Ask, "print the next configuration"),
            "tell": (Tell, "record a trial's CV score"),
            "status": (Status, "list the trials"),
            "space": (Space, "print the default search space YAML")}


def _objective(folds_dir: str, model: str | None, root: str, cache: str, quantize: str | None):
  from palijudge.experiments import cv
  return lambda config, report: cv.cv_objective(config, folds_dir, report, model=model,
                                                root=root, cache_dir=cache, quantize=quantize)


def main(cfg, project):
  import optuna
  from palijudge.experiments import leaderboard, tune
  s = cfg.study
  experiments = s.experiments or str(project.experiments)
  if isinstance(cfg, Space):
    print(tune.DEFAULT_SPACE_YAML, end="")
    return 0
  score = tune.parse_score(cfg.score) if isinstance(cfg, Tell) else None
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  fixed = tune.fixed_flags(cfg.fixed) if isinstance(cfg, Ask) else {}
  space = tune.with_fixed(tune.load_space(s.space), fixed)  # refused before the study opens
  study = tune.open_study(s.storage, s.study, seed=s.seed, root=experiments,
                          heartbeat=s.heartbeat, grace=s.grace)
  if isinstance(cfg, Ask):
    if cfg.cv:  # The folds must exist before a trial binds.
      from palijudge.data import splits
      splits.fold_paths(project.split(cfg.cv, "--cv"))
    target = tune.bind(study, tune.Target(cfg.model, cfg.cv, space.metric, cfg.root,
                                          cfg.quantize, fixed))
  if isinstance(cfg, Run):
    _run(cfg, project, study, space, target, experiments)
  elif isinstance(cfg, Ask):
    number, _, command = tune.ask(study, space, records_root=experiments, target=target)
    print(f"trial {number}:\n  {command}")
    print(f"then: python playground/06-tune.py tell {number} SCORE   (the CV {space.metric})")
  elif isinstance(cfg, Tell):
    out = tune.tell(study, cfg.trial, score, cfg.reason)
    print(f"trial {out.number}: {out.state}" + (f" {out.value:.4f}" if out.value is not None
                                                 else f" ({out.reason})"))
  else:
    print(leaderboard.study_status(study))
  return 0


def _run(cfg, project, study, space, target, experiments):
  from palijudge import loader
  from palijudge.experiments import leaderboard, tune
  try:
    spec = loader.resolve(project.find(target.model), cache_dir=str(project.cache))
  except cli.UserError:
    spec = None  # Each trial says what is missing, as it loads.
  cli.announce(spec=spec)
  folds = project.split(target.cv, "--cv")
  objective = _objective(str(folds), project.find(target.model),
                         resolve(cfg, project).root(folds), str(project.cache),
                         target.quantize)
  tune.run_trials(study, space, objective, cfg.trials, records_root=experiments, target=target)
  print(leaderboard.study_status(study))


if __name__ == "__main__":
  cli.run(COMMANDS, main)
