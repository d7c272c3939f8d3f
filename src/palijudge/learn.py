"""The users' iteration (`03-do_learn.py`) as one library call: evaluate, train, evaluate, save.

`learn` evaluates all/train/valid (and any extra sets) before training, runs
`runs` independent trainings of one or two stages (the second at lr/10),
evaluates after each stage, keeps the run whose validation metric is best,
and saves its checkpoint atomically with the recipe, prompt and decision
threshold (`--keep all`: every run's too, as NAME.runK.npz, for an ensemble).
`--probe` fits the linear probe (see `probe`) on the encoder before training
and reports it beside the fine-tune; `--probe-only` does only that. It sits
above `train` and `evaluation` and below the experiments: run records are
written through the small `Recorder` interface, which
`experiments.records.RunRecord` implements, so nothing here imports them.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from typing import Callable, Protocol, Sequence

from palijudge import checkpoint
from palijudge.evaluation import compare
from palijudge import distributed
from palijudge import files
from palijudge import loader as loader_lib
from palijudge import metrics
from palijudge import params as params_lib
from palijudge import predictions
from palijudge.evaluation import probe as probe_lib
from palijudge import quantize
from palijudge import train as train_lib
from palijudge.data.batch import PixelCache
from palijudge.data.examples import Example
from palijudge.errors import UserError
from palijudge.configs import EvalConfig
from palijudge.evaluation.scoring import EvalResult, evaluate
from palijudge.evaluation.reports import format_result, report, shared_threshold
from palijudge.loader import LoadedModel
from palijudge.model import lora
from palijudge.configs import LearnConfig  # noqa: F401
from palijudge.phases import NoPhases, Phases

Log = Callable[[str], None]


class Recorder(Protocol):
  """Where a run's log, metrics and predictions go (experiments.records.RunRecord)."""

  def log_step(self, step: int, lr: float, loss: float, grad_norm: float | None = None,
               seconds: float | None = None, stage: str = "") -> None: ...
  def log_valid(self, step: int, value: float, stage: str = "") -> None: ...
  def write_eval(self, stage: str, metrics: dict) -> object: ...
  def write_predictions(self, rows) -> object: ...
  def write_config(self, config: dict, merge: bool = False) -> object: ...
  def write_run_summary(self, blocks: str = "") -> object: ...
  def plots(self) -> object: ...


@dataclasses.dataclass(frozen=True)
class LearnResult:
  lm: LoadedModel
  before: dict[str, EvalResult]
  after: dict[str, EvalResult]  # After the last stage of the best run.
  diverged: str = ""            # Why the kept run's training stopped early, if it did.
  probe: dict[str, EvalResult] | None = None  # The linear probe's results (--probe).


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
class _Kept:
  """The run a lottery keeps: the best by --select on the valid set."""
  score: float
  run: int                      # 0-based.
  lm: LoadedModel               # Its trained model.
  after: dict[str, EvalResult]  # Its results after the last stage.
  tcfg: train_lib.TrainConfig   # Its recipe (its seed).
  diverged: str


class _Lottery:
  """`--runs` runs of one or two stages each, evaluated after every stage; keeps the best.

  Made once per `learn` call with what every run shares: the sets it reports and the
  caches it reports them with, the recipe's evaluation and learning configs, where the
  results go (checkpoint, run record, phase timings) and the results before training
  (each Result block's baseline).
  """

  def __init__(self, sets: dict, valid_name: str, ecfg: EvalConfig, lcfg: LearnConfig,
               cache: PixelCache, features, before: dict, save_to: str | None,
               record: Recorder | None, phases: Phases | NoPhases, log: Log):
    self.sets, self.valid_name, self.ecfg, self.lcfg = sets, valid_name, ecfg, lcfg
    self.cache, self.features, self.before = cache, features, before
    self.save_to, self.record, self.phases, self.log = save_to, record, phases, log

  def run(self, lm: LoadedModel, train: Sequence[Example], tcfg: train_lib.TrainConfig
          ) -> _Kept:
    """Every run; the best by --select on the valid set. With --keep all every run's
    checkpoint is saved as it finishes (run_path)."""
    best, runs, lcfg, log = None, self.lcfg.runs, self.lcfg, self.log
    scores, valids = [], []  # Every run's, for the spread and the lead printed at the end.
    for run in range(runs):
      cfg = dataclasses.replace(tcfg, seed=tcfg.seed + 1000 * run)
      if runs > 1:
        log(f"run {run + 1}/{runs} (seed {cfg.seed})")
      run_lm, after, diverged = self._stages(lm, train, cfg, run)
      score = selection_score(after[self.valid_name], lcfg.select)
      scores.append(score)
      valids.append(after[self.valid_name])
      if runs > 1:
        log(f"run {run + 1}: valid {lcfg.select} = {score:.4f}")
      if lcfg.keep == "all" and distributed.is_main():
        path = run_path(self.save_to, run + 1)
        with self.phases("save"):
          save(run_lm, cfg, self.ecfg, lcfg, path, shared_threshold(after), diverged)
        log(f"saved {files.shown(path)}")
      if best is None or score > best.score:
        best = _Kept(score, run, run_lm, after, cfg, diverged)
    if runs > 1:  # Is the winner better, or luckier? (see compare.lottery)
      for line in compare.lottery([f"run {i + 1}" for i in range(runs)], scores, valids,
                                  lcfg.select, best.run):
        log(line)
    return best

  def _stages(self, lm: LoadedModel, train: Sequence[Example], tcfg: train_lib.TrainConfig,
              run: int) -> tuple[LoadedModel, dict[str, EvalResult], str]:
    """One run: 1 or 2 stages, evaluated after each. Returns (lm, after-results, diverged)."""
    lcfg, record, log = self.lcfg, self.record, self.log
    state = state_path(self.save_to) if self.save_to else None
    stages = [tcfg] + ([dataclasses.replace(tcfg, lr=tcfg.lr / 10)] if lcfg.two_stage else [])
    after, diverged = {}, ""
    for i, stage in enumerate(stages):
      log(f"training stage {i + 1}: lr {stage.lr:g}, batch {stage.batch_size}"
          f"{f' x {stage.accum}' if stage.accum > 1 else ''}, {stage.steps} steps, "
          f"trainable {stage.trainable}, {stage.optimizer}, seed {stage.seed}")
      name = f"run {run + 1}, stage {i + 1}" if lcfg.runs > 1 else f"stage {i + 1}"
      stream = (lambda *row, name=name: record.log_step(*row, stage=name)) if record else None
      where = train_lib.Stage(state_path=state, resume=lcfg.resume, index=run * 2 + i,
                              on_step=stream, evaluation=self._evaluation(lm, stage, name))
      result = train_lib.fit(lm, train, stage, self.ecfg, where, log=log, cache=self.cache,
                             features=self.features)
      self.phases.add("compilation", result.compile_seconds)
      self.phases.add("training", result.seconds - result.compile_seconds)
      if result.diverged:
        diverged = f"stage {i + 1}: {result.diverged}; kept step {result.kept_step}"
      if i + 1 < len(stages):  # Stage 2 continues the seed that stage 1 ended with.
        stages[i + 1] = dataclasses.replace(stages[i + 1], seed=result.seed)
      lm = dataclasses.replace(lm, params=result.params,
                               model=lm.model.clone(lora_alpha=stage.lora_alpha))
      with self.phases("after_evaluation"):
        tag = _TAGS[i]
        after = report(lm, self.sets, self.ecfg, tag, log, self.cache, self.features,
                       baseline=self.before, strict=False)
      warning = metrics.constant_warning(after[self.valid_name].confusion)
      if warning:  # A run that learned nothing says so (the record flags it: constant_answer).
        log(f"warning: {tag} on {os.path.basename(self.valid_name)}: {warning}")
      if record:  # Every stage of every run, not only the kept one.
        record.write_eval(stage_name(run, i, lcfg.runs), _by_name(after))
    return lm, after, diverged

  def _evaluation(self, lm: LoadedModel, tcfg: train_lib.TrainConfig, stage: str
                  ) -> train_lib.Evaluation | None:
    """--eval-every: the valid set's --select metric on the trained parameters, every N steps
    (logged to the run record beside the loss)."""
    lcfg = self.lcfg
    if not lcfg.eval_every:
      return None
    valid = self.sets[self.valid_name]
    model = lm.model.clone(lora_alpha=tcfg.lora_alpha)  # As the stage's result is evaluated.

    def score(step: int, params) -> float:
      trained = dataclasses.replace(lm, params=params, model=model)
      result = evaluate(trained, valid, self.ecfg, self.cache, self.features,
                        desc="eval during training")
      value = selection_score(result, lcfg.select)
      if self.record:
        self.record.log_valid(step, value, stage=stage)
      return value
    return train_lib.Evaluation(lcfg.eval_every, score, lcfg.select, lcfg.patience)


_TAGS = ("1st trained", "2nd trained")  # The Result blocks' tag after each stage.


def stage_name(run: int, stage: int, runs: int) -> str:
  """A trained stage's name in the run record (0-based run and stage): `1st trained`, or
  `run 2, 2nd trained` in a lottery of several runs."""
  return f"run {run + 1}, {_TAGS[stage]}" if runs > 1 else _TAGS[stage]


def learn(lm: LoadedModel, train: Sequence[Example], valid: Sequence[Example],
          tcfg: train_lib.TrainConfig, ecfg: EvalConfig, lcfg: LearnConfig = LearnConfig(), *,
          names: tuple[str, str, str], save_to: str | None = None,
          record: Recorder | None = None, extra_sets: dict | None = None,
          phases: Phases | None = None, log: Log = print) -> LearnResult:
  """03-do_learn: evaluate before, train (runs x stages), evaluate after, save the best.

  `names` are how all/train/valid are printed; `save_to` the checkpoint path;
  `phases`, if given, times each phase (evaluation, compilation, training, save).
  """
  ph = phases if phases is not None else NoPhases()
  if lcfg.full and save_to:
    quantize.check_full_save(lm.quantize)
  all_name, train_name, valid_name = names
  sets = {all_name: [train_name, valid_name], train_name: train, valid_name: valid,
          **(extra_sets or {})}
  if save_to and distributed.is_main():  # Process 0 alone writes (see distributed).
    _prepare_save(save_to, log)
  if lcfg.keep == "all":
    _prepare_run_files(save_to, lcfg.runs, log)
  cache = PixelCache()
  # Training runs on every process's devices (lm); evaluation on each process's own, over
  # its view of the same arrays (`distributed.local`: lm itself with one process).
  view = dataclasses.replace(lm, params=distributed.local(lm.params))
  # Image tokens are computed once per image when the encoder stays frozen.
  features = loader_lib.feature_cache(view, tcfg.trainable, ecfg.gif_frame)
  if lcfg.probe_only:
    probed = _probe(view, train, sets, ecfg, features, save_to, ph, log)
    if record:
      _write_record(record, {}, "", valid_name, probed)
    return LearnResult(lm, {}, {}, probe=probed)
  with ph("before_evaluation"):
    before = report(view, sets, ecfg, "before training", log, cache, features, strict=False)
  if record:  # At once, in the order things happen (and kept if the run is killed).
    record.write_eval("before training", _by_name(before))
  lottery = _Lottery(sets, valid_name, ecfg, lcfg, cache, features, before, save_to, record,
                     ph, log)
  best = lottery.run(lm, train, tcfg)
  trained, after, diverged = best.lm, best.after, best.diverged
  if lcfg.runs > 1:
    log(f"best run: {best.run + 1}/{lcfg.runs} (seed {best.tcfg.seed}), valid {lcfg.select} = "
        f"{best.score:.4f}")
  probed = None
  if lcfg.probe:  # On the encoder before training: the floor the fine-tune should beat.
    probed = _probe(view, train, sets, ecfg, features, save_to, ph, log)
    log(versus(after[valid_name], probed[valid_name], valid_name))
  if save_to and distributed.is_main():  # With the threshold picked on a split, if one was.
    with ph("save"):
      save(trained, best.tcfg, ecfg, lcfg, save_to, shared_threshold(after), diverged)
    log(f"saved {files.shown(save_to)}")
  if record:
    final = stage_name(best.run, 1 if lcfg.two_stage else 0, lcfg.runs)
    _write_record(record, after, final, valid_name, probed)
  return LearnResult(trained, before, after, diverged, probed)


def _stem(save_to: str) -> str:
  """NAME of checkpoints' NAME.npz: the files a run writes beside it are NAME.<what>.npz."""
  return save_to[:-len(".npz")] if save_to.endswith(".npz") else save_to


def state_path(save_to: str) -> str:
  """Where a run saving NAME.npz keeps its periodic train state: NAME.state.npz."""
  return _stem(save_to) + ".state.npz"


def probe_path(save_to: str) -> str:
  """Where --probe with -w saves the fitted probe: NAME.probe.npz."""
  return _stem(save_to) + probe_lib.SUFFIX


def outputs_of(save_to: str, lcfg: LearnConfig) -> list[str]:
  """Every file a run saving `save_to` may write or remove: the checkpoint, its train state,
  the probe, and with --keep all each run's file and those of a longer earlier lottery."""
  out = [save_to, state_path(save_to), probe_path(save_to)]
  if lcfg.keep == "all":
    out += [run_path(save_to, k) for k in range(1, lcfg.runs + 1)]
    out += [path for _, path in _run_files(save_to)]
  return out


def run_path(save_to: str, run: int) -> str:
  """Where --keep all saves run `run` (1-based): NAME.npz -> NAME.run{run}.npz."""
  return f"{_stem(save_to)}.run{run}.npz"


def _run_files(save_to: str) -> list[tuple[int, str]]:
  """(run, path) of every NAME.run{run}.npz beside `save_to` now, by name."""
  stem = re.escape(os.path.basename(_stem(save_to)))
  folder = os.path.dirname(os.path.abspath(save_to))
  names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
  return [(int(m.group(1)), os.path.join(folder, n)) for n in names
          if (m := re.fullmatch(stem + r"\.run(\d+)\.npz", n))]


def _prepare_run_files(save_to: str | None, runs: int, log: Log) -> None:
  """--keep all needs -w; run files of an earlier, longer lottery under NAME are removed."""
  if not save_to:
    raise UserError("--keep all needs -w NAME (every run is saved beside NAME.npz)")
  if not distributed.is_main():
    return
  for run, path in _run_files(save_to):
    if run > runs:
      os.remove(path)
      log(f"removed {os.path.basename(path)}, left by an earlier lottery with more runs")


def _probe(lm: LoadedModel, train: Sequence[Example], sets: dict, ecfg: EvalConfig,
           features, save_to: str | None, ph, log: Log) -> dict[str, EvalResult]:
  """--probe: fit on the train split, report every set, save NAME.probe.npz with -w."""
  with ph("probe"):
    fitted, results = probe_lib.fit_and_report(lm, train, sets, ecfg, features, log,
                                               strict=False)
  if save_to and distributed.is_main():
    path = probe_path(save_to)
    probe_lib.save(path, fitted)
    log(f"saved {files.shown(path)}")
  return results


def versus(tuned: EvalResult, probed: EvalResult, name: str) -> str:
  """One line: the fine-tune and the probe on the same set, side by side."""
  parts = []
  for label, get in (("accuracy", lambda r: r.confusion.accuracy),
                     ("F-measure", lambda r: r.confusion.f_measure),
                     ("ROC-AUC", lambda r: r.scores.roc_auc)):
    a, b = get(tuned), get(probed)
    show = lambda x: "n/a" if x is None else f"{x:.4f}"
    parts.append(f"{label} {show(a)} vs {show(b)}")
  return f"fine-tune vs probe on {name}: {', '.join(parts)}"


def _write_record(record: Recorder, after, final: str, valid_name: str, probed=None) -> None:
  """What a run ends with: the probe's metrics, which stage the predictions and the headline
  are of (`final_stage`: the kept run's last stage, or the probe), and the summary, its
  Result blocks tagged as printed. The stages' metrics were written as they came."""
  if probed:
    record.write_eval("probe", _by_name(probed))
  final, results = (final, after) if after else ("probe", probed)
  record.write_predictions(predictions.records_of(results[valid_name]))
  record.write_config({"predictions_of": f"{os.path.basename(valid_name)}, {final}",
                       "final_stage": final}, merge=True)
  blocks = [format_result(res, f"{name} ({final})") for name, res in results.items()]
  if after and probed:
    blocks += [format_result(res, f"{name} (probe)") for name, res in probed.items()]
  record.write_run_summary("\n".join(blocks))
  record.plots()


def _by_name(results: dict[str, EvalResult]) -> dict[str, dict]:
  """Each set's metrics, with `constant_answer` ("yes"/"no"/None: every prediction the same)."""
  return {os.path.basename(n): dict(res.metrics(),
                                    constant_answer=metrics.constant_answer(res.confusion))
          for n, res in results.items()}


def save(lm: LoadedModel, tcfg: train_lib.TrainConfig, ecfg: EvalConfig, lcfg: LearnConfig,
         path: str, threshold: float, diverged: str = "", parent: str | None = None) -> None:
  """The trained model: a delta over its base (or every parameter), with its recipe.

  `parent`: the checkpoint training continued from (15-train.py -l), recorded
  by path and sha256. A delta over a delta keeps the parent's leaves too.
  """
  meta = {"diverged": diverged} if diverged else {}
  meta |= {"tokenizer": lm.spec.tokenizer, "base": lm.spec.weights, "prompt": ecfg.prompt,
          "train_config": dataclasses.asdict(tcfg), "two_stage": lcfg.two_stage,
          "threshold": threshold,
          "saved": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  if parent:
    meta["parent"] = {"path": os.path.abspath(parent), "sha256": files.sha256_remembered(parent)}
  if lm.quantize:  # Re-validation quantizes the base as this run did (quantize.for_checkpoint).
    meta["quantize"] = lm.quantize
  base = lm.spec.base or lm.spec.weights
  if lcfg.full or params_lib.saves_everything(tcfg.trainable):
    quantize.check_full_save(lm.quantize)
    checkpoint.save(path, lora.merge(lm.params, lm.model.lora_alpha), lm.cfg, meta)
  else:  # A delta: the trained leaves (and those of a delta it continued) and the base's sha256.
    pattern = params_lib.trainable_pattern(tcfg.trainable)
    earlier = set(checkpoint.param_names(lm.spec.weights)) if lm.spec.base else set()
    keep = lambda name: bool(pattern.search(name)) or name in earlier
    checkpoint.save_delta(path, lm.params, keep, lm.cfg, base, meta, lm.spec.cache_dir)
  state = state_path(path)
  if os.path.exists(state):
    os.remove(state)  # The run finished: its periodic state is obsolete.


def _prepare_save(save_to: str, log: Log) -> None:
  """Before any work: the checkpoint can be written, a killed save's leftovers are gone, and
  replacing an existing checkpoint is said out loud."""
  for name in files.sweep_stale(os.path.dirname(os.path.abspath(save_to))):
    log(f"removed {name}, left by a save that was killed")
  files.check_writable(save_to, "checkpoint")
  if os.path.exists(save_to):
    try:
      saved = checkpoint.read_meta(save_to).get("saved")
    except UserError:  # Not a checkpoint we can read: replaced all the same.
      saved = None
    when = f" (saved {saved[:19].replace('T', ' ')})" if isinstance(saved, str) else ""
    log(f"warning: {files.shown(save_to)}{when} exists and will be replaced when this run saves")


def train_file(lm: LoadedModel, examples: Sequence[Example], tcfg: train_lib.TrainConfig,
               ecfg: EvalConfig, save_to: str, *, parent: str | None = None, full: bool = False,
               resume: bool = False, record: Recorder | None = None,
               log: Log = print) -> LoadedModel:
  """15-train.py: one stage on one data file, saved (no evaluation: 13/14 judge it after).

  The train state goes to `state_path(save_to)` every --save-every steps; `resume`
  continues from it (as 03-do_learn.py --resume does). `record` gets the training log,
  the loss plot and a summary (no metrics: nothing is evaluated).
  """
  if full:
    quantize.check_full_save(lm.quantize)
  if distributed.is_main():
    _prepare_save(save_to, log)
  log(f"training on {len(examples)} examples: lr {tcfg.lr:g}, batch {tcfg.batch_size}"
      f"{f' x {tcfg.accum}' if tcfg.accum > 1 else ''}, {tcfg.steps} steps, "
      f"trainable {tcfg.trainable}, {tcfg.optimizer}, seed {tcfg.seed}")
  stream = (lambda *row: record.log_step(*row, stage="stage 1")) if record else None
  stage = train_lib.Stage(state_path=state_path(save_to), resume=resume, on_step=stream)
  result = train_lib.fit(lm, examples, tcfg, ecfg, stage, log=log)
  trained = dataclasses.replace(lm, params=result.params,
                                model=lm.model.clone(lora_alpha=tcfg.lora_alpha))
  if distributed.is_main():
    save(trained, tcfg, ecfg, LearnConfig(full=full), save_to, ecfg.decision, result.diverged,
         parent=parent)
    log(f"saved {files.shown(save_to)}")
  warning = constant_on_sample(trained, examples, ecfg)
  if warning:
    log(f"warning: {warning}")
  if record:
    if result.diverged:
      record.write_config({"diverged": result.diverged}, merge=True)
    record.write_run_summary()
    record.plots()
  return trained


def record_config(lm: LoadedModel, tcfg: train_lib.TrainConfig, dataset: str,
                  save_to: str | None, **more) -> dict:
  """What a training run's record (03-do_learn.py, 15-train.py) says it ran: the recipe,
  the data, the model and the checkpoint it saves."""
  return {"train_config": dataclasses.asdict(tcfg), "dataset": dataset, "model": lm.spec.name,
          "weights": lm.spec.weights, "tokenizer": lm.spec.tokenizer,
          "checkpoint": files.shown(save_to) if save_to else None, **more}


def resumed_checkpoint(save_to: str | None, resume: bool) -> str | None:
  """The checkpoint (as records show it) whose killed run this run resumes: with --resume
  and a train state left beside it; else None (a new run, a new record)."""
  if save_to and resume and os.path.exists(state_path(save_to)):
    return files.shown(save_to)
  return None


CONSTANT_SAMPLE = 64  # Training examples 15-train.py scores to tell a run that learned nothing.


def constant_on_sample(lm: LoadedModel, examples: Sequence[Example], ecfg: EvalConfig) -> str:
  """The constant-answer warning for a run with no valid set (15-train.py): judged on
  `CONSTANT_SAMPLE` training examples spread over the file (seconds), the class balance
  quoted being the whole file's."""
  sample = list(examples[::max(1, len(examples) // CONSTANT_SAMPLE)])[:CONSTANT_SAMPLE]
  answer = metrics.constant_answer(evaluate(lm, sample, ecfg, desc="constant check").confusion)
  if answer is None:
    return ""
  n_yes = sum(bool(e.label) for e in examples)
  said = dict(tp=n_yes, fp=len(examples) - n_yes) if answer == "yes" else \
      dict(tn=len(examples) - n_yes, fn=n_yes)
  every = metrics.Confusion(**{"tp": 0, "tn": 0, "fp": 0, "fn": 0, **said})
  return (f"on {len(sample)} of its training examples, "
          + metrics.constant_warning(every, "the training data is"))
