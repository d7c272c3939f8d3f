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
import argparse

import _env  # noqa: F401  (runs this script with the project's .venv)
from palijudge import cli

KEYS = ("lr", "loss", "focal_alpha", "focal_gamma", "bce_weight", "focal_weight")


def _parser():
  from palijudge import quantize
  from palijudge.experiments import tune
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--storage", default=None,
                      help="study database: a file or a URL (default: EXPERIMENTS/study.db)")
  common.add_argument("--study", default=tune.DEFAULT_STUDY, help="study name")
  common.add_argument("--space", default=None, help="search space YAML (default: built in)")
  common.add_argument("--experiments", default=None,
                      help="where run records go (default: the project's experiments/)")
  common.add_argument("--seed", type=int, default=None, help="sampler seed (default: random)")
  common.add_argument("--heartbeat", type=_positive, default=tune.HEARTBEAT_S,
                      help="seconds between a running trial's heartbeats")
  common.add_argument("--grace", type=_positive, default=tune.GRACE_S,
                      help="seconds without a heartbeat before a trial counts as dead")
  p = cli.parser(__doc__)
  fmt = p.formatter_class
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
  run = sub.add_parser("run", parents=[common], formatter_class=fmt, help="train and score N trials now")
  run.add_argument("--trials", type=int, required=True, help="how many trials to run now")
  run.add_argument("--cv", required=True, help="fold splits dataset/NAME (02 --folds K -n NAME)")
  ask = sub.add_parser("ask", parents=[common], formatter_class=fmt, help="print the next configuration")
  ask.add_argument("--cv", default=None, help="fold splits the command line should use "
                   "(default: the study's)")
  for p_ in (run, ask):
    p_.add_argument("--model", default=None, help="base model: preset or checkpoint "
                    "(default: the study's, else paligemma-3b-pt-224)")
    p_.add_argument("--quantize", default=None, choices=quantize.MODES,
                    help="quantize the model's frozen matrices, as 03's --quantize (default: "
                    "the study's, else as the checkpoint records)")
    cli.add_root_flag(p_)
    tune.add_fixed_flags(p_)  # 03-do_learn.py's flags, fixed for every trial
  tell = sub.add_parser("tell", parents=[common], formatter_class=fmt, help="record a trial's CV score")
  tell.add_argument("trial", type=int, help="trial number (from ask)")
  tell.add_argument("score", help="the CV score, or `fail`")
  tell.add_argument("--reason", default="", help="why it failed (with `fail`)")
  sub.add_parser("status", parents=[common], formatter_class=fmt, help="list the trials")
  sub.add_parser("space", parents=[common], formatter_class=fmt, help="print the default search space YAML")
  return p


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


def _objective(folds_dir: str, model: str | None, root: str, cache: str, quantize: str | None):
  from palijudge.experiments import cv
  return lambda config, report: cv.cv_objective(config, folds_dir, report, model=model,
                                                root=root, cache_dir=cache, quantize=quantize)


def _why(t, retried: dict[int, int]) -> str:
  """The note after a trial's line: why it failed or was pruned, retries, warnings."""
  from palijudge.experiments import tune
  notes = [t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or ""]
  if t.state.name == "FAIL" and not notes[0]:  # failed by a live worker's heartbeat check
    notes[0] = tune.STALE_REASON + (f"; retried as trial {retried[t.number]}"
                                    if t.number in retried else "")
  if "failed_trial" in t.system_attrs:
    notes.append(f"retry of trial {t.system_attrs['retry_history'][-1]}")
  notes.append(f"warning: {t.user_attrs['warning']}" if t.user_attrs.get("warning") else "")
  return "; ".join(n for n in notes if n)


def status_text(study, now=None) -> str:
  """One line per trial, the best (its full command line), trials of the last 7 days."""
  import datetime
  from palijudge.experiments import tune
  from palijudge.experiments.leaderboard import fmt, settings_of
  trials = study.get_trials(deepcopy=False)
  retried = {t.system_attrs["retry_history"][-1]: t.number for t in trials
             if "retry_history" in t.system_attrs}
  lines = [f"study {study.study_name}: {len(trials)} trial(s)",
           f"{'trial':>5}  {'state':8} {'score':>7}  settings"]
  for t in trials:
    cfg = settings_of(t.user_attrs.get("config") or t.params)
    text = " ".join(f"{k}={fmt(k, cfg[k])}" for k in KEYS if k in cfg)
    why = _why(t, retried)
    lines.append(f"{t.number:5d}  {t.state.name:8} {fmt('score', t.value):>7}  {text}"
                 + (f"  [{why}]" if why else ""))
  done = [t for t in trials if t.state.name == "COMPLETE"]
  if done:
    best = max(done, key=lambda t: t.value)
    attrs = study.user_attrs
    target = tune.Target(attrs.get("model"), attrs.get("cv") or best.user_attrs.get("cv"),
                         attrs.get("metric", "f_measure"), quantize=attrs.get("quantize") or None)
    command = (tune.to_command(best.user_attrs["config"], target)  # older studies: as stored
               if "config" in best.user_attrs and "model" in attrs
               else best.user_attrs.get("command", ""))
    lines.append(f"best: trial {best.number} with {best.value:.4f}: {command}")
  now = now or datetime.datetime.now()
  week = [t for t in trials if t.datetime_complete
          and now - t.datetime_complete < datetime.timedelta(days=7)]
  lines.append(f"finished in the last 7 days: {len(week)}")
  return "\n".join(lines)


def _score(text: str) -> float | None:
  from palijudge.errors import UserError
  if text.lower() in ("fail", "failed"):
    return None
  try:
    return float(text)
  except ValueError:
    raise UserError(f"score must be a number or `fail`, got {text!r}") from None


def main(args, project):
  import optuna
  from palijudge.experiments import tune
  from palijudge.errors import UserError
  experiments = args.experiments or str(project.experiments)
  if args.command == "space":
    print(tune.DEFAULT_SPACE_YAML, end="")
    return 0
  if args.command == "run" and args.trials < 1:
    raise UserError(f"--trials must be >= 1, got {args.trials}")
  score = _score(args.score) if args.command == "tell" else None
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  fixed = tune.fixed_flags(args)
  space = tune.with_fixed(tune.load_space(args.space), fixed)  # refused before the study opens
  study = tune.open_study(args.storage, args.study, seed=args.seed, root=experiments,
                          heartbeat=args.heartbeat, grace=args.grace)
  if args.command in ("run", "ask") and args.cv:  # The folds must exist before a trial binds.
    from palijudge.data import splits
    splits.fold_paths(project.split(args.cv, "--cv"))
  if args.command in ("run", "ask"):
    target = tune.bind(study, tune.Target(args.model, args.cv, space.metric, args.root,
                                          args.quantize, fixed))
  if args.command == "run":
    from palijudge import loader
    try:
      spec = loader.resolve(project.find(target.model), cache_dir=str(project.cache))
    except cli.UserError:
      spec = None  # Each trial says what is missing, as it loads.
    cli.announce(spec=spec)
    objective = _objective(str(project.split(target.cv, "--cv")), project.find(target.model),
                           cli.data_root(args, project, project.split(target.cv, "--cv")),
                           str(project.cache), target.quantize)
    tune.run_trials(study, space, objective, args.trials, records_root=experiments,
                    target=target)
    print(status_text(study))
  elif args.command == "ask":
    number, _, command = tune.ask(study, space, records_root=experiments, target=target)
    print(f"trial {number}:\n  {command}")
    print(f"then: python playground/06-tune.py tell {number} SCORE   (the CV {space.metric})")
  elif args.command == "tell":
    out = tune.tell(study, args.trial, score, args.reason)
    print(f"trial {out.number}: {out.state}" + (f" {out.value:.4f}" if out.value is not None
                                                 else f" ({out.reason})"))
  else:
    print(status_text(study))
  return 0


if __name__ == "__main__":
  cli.run(main, __file__, _parser)
