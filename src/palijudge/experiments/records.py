"""Run records: one folder per training run, fold or trial, under experiments/.

  experiments/<run>/config.yaml        the complete resolved configuration, and the run's
                                       status: running, finished, interrupted or failed
  experiments/<run>/train_log.csv      stage, step, lr, loss, grad_norm, seconds (streamed;
                                       a step logged again replaces its stage's rows from
                                       that step on: a resumed run continues one log)
  experiments/<run>/eval_metrics.json  {stage: metrics}, merged stage by stage
  experiments/<run>/predictions.jsonl  image, label, p_yes, pred per example
  experiments/<run>/summary.md         a short human summary
  experiments/<run>/*.png              loss, roc, pr, confusion, p_yes_hist
  experiments/<run>/events.out.tfevents.*  the same curves and metrics for TensorBoard
                                       (`tensorboard --logdir experiments`), via tensorboardX

Pure file I/O (no jax). Every file but the append-only CSV is written to a
temp file and renamed over the target. `open_run` makes a training run's
record, or reopens the one a killed run left when that run is resumed (one
run, one record). A CV run keeps its folds as nested
records (experiments/<run>/fold-1/...); its own eval_metrics.json holds the
`cv` block of `cv.CVSummary.to_dict()`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import io
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from palijudge.experiments import plots as plots
from palijudge.errors import UserError, where
from palijudge import files
from palijudge import params as params_lib
from palijudge.data.examples import parse_yes_no
from palijudge.metrics import DEFAULT_THRESHOLD

CONFIG, LOG, METRICS, PREDICTIONS, SUMMARY = (
    "config.yaml", "train_log.csv", "eval_metrics.json", "predictions.jsonl", "summary.md")
LOG_FIELDS = ("stage", "step", "lr", "loss", "grad_norm", "seconds")
STATUSES = ("running", "finished", "interrupted", "failed")
PLOTS = {"loss": "loss.png", "roc": "roc.png", "pr": "pr.png", "confusion": "confusion.png",
         "hist": "p_yes_hist.png"}
EVENTS = "events.out.tfevents.*"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def plain(value: Any) -> Any:
  """JSON/YAML-safe copy: dataclasses, tuples, numpy scalars/arrays, paths."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    value = dataclasses.asdict(value)
  if isinstance(value, dict):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, set)):
    return [plain(v) for v in value]
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  if hasattr(value, "tolist"):  # numpy scalar or array
    return plain(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no nan/inf; keep the information as text
  return value


def unique_name(root: Path, name: str | None) -> Path:
  """Creates and returns root/<name>, or root/<name>.2, .3, ... if taken.

  (Not -2: a folder name must never read like 03-do_learn.py's -2 flag.)

  Without a name: a timestamp (20250101-120000). Created with mkdir, so two
  processes never get the same folder.
  """
  base = _SAFE.sub("-", name).strip("-.") if name else ""
  base = base or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  root.mkdir(parents=True, exist_ok=True)
  for i in range(1, 10_000):
    path = root / (base if i == 1 else f"{base}.{i}")
    try:
      path.mkdir()
      return path
    except FileExistsError:
      continue
  raise UserError(f"{where(root)}: no free run folder name for {base!r}")


def _yes(value: Any) -> bool:
  """A label or prediction as stored: "yes"/"no" (the prediction schema) or a bool."""
  return bool(parse_yes_no(value)) if isinstance(value, str) else bool(value)


class RunRecord:
  """The folder of one run. `RunRecord()` creates it; `RunRecord.load` opens one."""

  def __init__(self, root: str | os.PathLike = "experiments", name: str | None = None, *,
               _path: Path | None = None):
    self.path = _path if _path is not None else unique_name(Path(root), name)
    self.name = self.path.name
    self._events = None  # tensorboardX writer, opened on the first scalar.
    self._last_steps: dict[str, float] | None = None  # Last logged step per stage.
    self._blocks: str | None = None  # The run summary's Result blocks, once written.

  @classmethod
  def load(cls, path: str | os.PathLike) -> RunRecord:
    path = Path(path)
    if not path.is_dir():
      raise UserError(f"{where(path)}: no such run folder")
    if not any((path / n).is_file() for n in (CONFIG, METRICS)):  # Not any folder (a dataset).
      raise UserError(f"{where(path)}: not a run record (no {CONFIG}); give the trial folder "
                      f"`06-tune.py ask` made")
    return cls(_path=path)

  def file(self, name: str) -> Path:
    return self.path / name

  # Writing.
  def write_config(self, config: dict[str, Any], merge: bool = False) -> Path:
    """config.yaml; merge=True updates the existing keys instead of replacing."""
    cfg = {**self.config(), **plain(config)} if merge else plain(config)
    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=10_000)
    return files.write_text(self.file(CONFIG), text)

  def log_step(self, step: int, lr: float, loss: float, grad_norm: float | None = None,
               seconds: float | None = None, stage: str = "") -> None:
    """Appends one row to train_log.csv (header first) and flushes: called as steps happen,
    so a killed run keeps its log up to the last step. A step at or before the stage's last
    logged one (a resumed run, a restart after divergence) first drops that stage's rows from
    this step on, so the log holds each step once."""
    path = self.file(LOG)
    last = self._logged_steps()
    if stage in last and step <= last[stage]:
      self._drop_steps(stage, step)
    new = not path.exists() or path.stat().st_size == 0
    row = [stage, int(step), _num(lr), _num(loss), _num(grad_norm), _num(seconds)]
    with open(path, "a", encoding="utf-8", newline="") as f:
      w = csv.writer(f)
      if new:
        w.writerow(LOG_FIELDS)
      w.writerow(row)
      f.flush()
    last[stage] = step
    self._scalars({f"{stage or 'train'}/{k}": v for k, v in
                   (("loss", loss), ("lr", lr), ("grad_norm", grad_norm))}, int(step))

  def _logged_steps(self) -> dict[str, float]:
    """{stage: last step} of train_log.csv, read once (a reopened record has rows)."""
    if self._last_steps is None:
      self._last_steps = {}
      for r in self.steps():
        if r["step"] is not None:
          self._last_steps[r["stage"]] = max(r["step"], self._last_steps.get(r["stage"], 0))
    return self._last_steps

  def _drop_steps(self, stage: str, step: int) -> None:
    """Rewrites train_log.csv without `stage`'s rows from `step` on."""
    path = self.file(LOG)
    with open(path, encoding="utf-8", newline="") as f:
      rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if not (
        r and r[0] == stage and (finite(r[1]) is None or finite(r[1]) >= step))]
    out = io.StringIO()
    csv.writer(out).writerows(keep)
    files.write_text(path, out.getvalue())

  def _scalars(self, values: dict[str, Any], step: int) -> None:
    """TensorBoard scalars (finite numbers only), flushed at once like the CSV."""
    values = {k: finite(v) for k, v in values.items() if not isinstance(v, bool)}
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
      return
    if self._events is None:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._events = SummaryWriter(os.fspath(self.path))
    for tag, value in values.items():
      self._events.add_scalar(tag, value, step)
    self._events.flush()

  def close(self) -> None:
    """Closes the TensorBoard writer (`running` does it on the way out)."""
    if self._events is not None:
      self._events.close()
      self._events = None

  def write_eval(self, stage: str, metrics: dict[str, Any]) -> Path:
    """Merges {stage: metrics} into eval_metrics.json (a stage written again is replaced)."""
    current = self.eval_metrics()
    current[str(stage)] = plain(metrics)
    out = files.write_text(self.file(METRICS), json.dumps(current, indent=2, ensure_ascii=False)
                           + "\n")
    # TensorBoard: eval/<set>/<metric>, at step = the stage's position (0 = the first written).
    flat = {k: v for k, v in params_lib.flatten(current[str(stage)]).items()
            if isinstance(v, (int, float))}  # Lists (curves, intervals) stay in the JSON.
    self._scalars({f"eval/{k}": v for k, v in flat.items()}, list(current).index(str(stage)))
    return out

  def write_predictions(self, rows: Iterable[dict[str, Any]]) -> Path:
    """predictions.jsonl: one row per example (image, label, p_yes, pred, ...)."""
    lines = [json.dumps(plain(r), ensure_ascii=False) + "\n" for r in rows]
    return files.write_text(self.file(PREDICTIONS), "".join(lines))

  def write_run_summary(self, blocks: str = "") -> Path:
    """summary.md of a training run (see `run_summary`), with its Result blocks; written
    again by `running` on the way out, so it shows the run's final status."""
    self._blocks = blocks
    return self.write_summary(run_summary(self, blocks))

  def write_summary(self, content: str | dict[str, Any]) -> Path:
    text = content if isinstance(content, str) else summary_markdown(self.name, content)
    return files.write_text(self.file(SUMMARY), text if text.endswith("\n") else text + "\n")

  @contextlib.contextmanager
  def running(self):
    """Marks the run in config.yaml: running (with pid) while inside, then finished, or
    interrupted (Ctrl-C) or failed (with the error's first line) on the way out. A run
    killed outright stays `running` with a pid that is gone: see `status`."""
    started = datetime.datetime.now(datetime.timezone.utc)
    self.write_config({"status": "running", "pid": os.getpid(),
                       "started": started.isoformat(timespec="seconds")}, merge=True)
    outcome, error = "finished", None
    try:
      yield self
    except KeyboardInterrupt:
      outcome = "interrupted"
      raise
    except BaseException as e:
      outcome, error = "failed", (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise
    finally:
      seconds = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
      with contextlib.suppress(UserError, OSError):  # Never mask the run's own error.
        self.write_config({"status": outcome, "seconds": round(seconds, 1),
                           **({"error": error} if error else {})}, merge=True)
        if self._blocks is not None:  # Written inside, while the status said running.
          self.write_run_summary(self._blocks)
      self.close()

  def status(self) -> str:
    """finished / interrupted / failed / running, or killed (running, its process gone);
    "" for records written before statuses existed."""
    cfg = self.config()
    status = cfg.get("status") if cfg.get("status") in STATUSES else ""
    if status == "running" and isinstance(cfg.get("pid"), int) and not files.pid_alive(cfg["pid"]):
      return "killed"
    return status

  # Reading.
  def config(self) -> dict[str, Any]:
    path = self.file(CONFIG)
    if not path.exists():
      return {}
    try:
      cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
      raise UserError(f"{where(path)}: invalid YAML ({_one_line(e)})") from None
    return cfg if isinstance(cfg, dict) else {}

  def eval_metrics(self) -> dict[str, Any]:
    path = self.file(METRICS)
    if not path.exists():
      return {}
    try:
      out = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
      raise UserError(f"{where(path)}: invalid JSON ({e.msg})") from None
    return out if isinstance(out, dict) else {}

  def steps(self) -> list[dict[str, float]]:
    """train_log.csv's rows: stage, then every other column as a number (None if not one),
    columns added after LOG_FIELDS included."""
    path = self.file(LOG)
    if not path.exists():
      return []
    with open(path, encoding="utf-8", newline="") as f:
      return [{"stage": r.get("stage") or "",
               **{k: finite(r.get(k)) for k in dict.fromkeys([*LOG_FIELDS, *r])
                  if k and k != "stage"}}
              for r in csv.DictReader(f)]

  def predictions(self) -> list[dict[str, Any]]:
    path = self.file(PREDICTIONS)
    if not path.exists():
      return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise UserError(f"{where(path, i)}: invalid JSON ({e.msg})") from None
    return rows

  def summary(self) -> str:
    path = self.file(SUMMARY)
    return path.read_text(encoding="utf-8") if path.exists() else ""

  def plots(self, threshold: float | None = None) -> list[Path]:
    """Renders every PNG the logged data allows; returns the paths written."""
    out: list[Path] = []
    log = [r for r in self.steps() if r["step"] is not None]
    if any(r["loss"] is not None for r in log):
      col = lambda k: [r[k] if r.get(k) is not None else math.nan for r in log]
      extra = {k: col(k) for k in log[0] if k not in LOG_FIELDS
               and any(r.get(k) is not None for r in log)}  # E.g. a valid metric per eval.
      out.append(plots.render_loss(col("step"), col("loss"), col("lr"), col("grad_norm"),
                                   self.file(PLOTS["loss"]), f"training loss: {self.name}",
                                   stages=[r["stage"] for r in log], extra=extra))
    rows = [r for r in self.predictions() if finite(r.get("p_yes")) is not None]
    if rows:
      out += self._prediction_plots(rows, threshold)
    return out

  def _prediction_plots(self, rows: Sequence[dict[str, Any]], threshold: float | None
                        ) -> list[Path]:
    labels = [_yes(r.get("label")) for r in rows]
    scores = [float(r["p_yes"]) for r in rows]
    thr = threshold if threshold is not None else finite(self.config().get("threshold")) or DEFAULT_THRESHOLD
    preds = [_yes(r["pred"]) if "pred" in r else s >= thr for r, s in zip(rows, scores)]
    tp = sum(y and p for y, p in zip(labels, preds))
    tn = sum(not y and not p for y, p in zip(labels, preds))
    fp = sum(p and not y for y, p in zip(labels, preds))
    fn = sum(y and not p for y, p in zip(labels, preds))
    about = self.config().get("predictions_of")
    about = f"{about} ({self.name})" if isinstance(about, str) and about else self.name
    made = [plots.render_roc(labels, scores, self.file(PLOTS["roc"]), f"ROC: {about}"),
            plots.render_pr(labels, scores, self.file(PLOTS["pr"]),
                            f"precision-recall: {about}"),
            plots.render_confusion(tp, tn, fp, fn, self.file(PLOTS["confusion"]),
                                   f"confusion at {thr:g}: {about}"),
            plots.render_histogram(labels, scores, self.file(PLOTS["hist"]), thr,
                                   f"p(yes) by true class: {about}")]
    return [p for p in made if p is not None]

  def event_files(self) -> list[Path]:
    """This run's TensorBoard event files (not its folds'), oldest first."""
    return sorted(self.path.glob(EVENTS), key=lambda p: p.stat().st_mtime_ns)

  def plot_files(self) -> dict[str, Path]:
    """The PNGs that exist, by kind (loss, roc, pr, confusion, hist)."""
    return {k: self.file(v) for k, v in PLOTS.items() if self.file(v).exists()}


def open_run(root: str | os.PathLike, name: str | None, config: dict[str, Any],
             resume_of: str | None = None) -> RunRecord:
  """The record of a training run: root/<name> (or <name>.2, ...) with `config`.

  `resume_of`: the checkpoint a resumed run saves (given only when its train state is
  there to resume from). The newest record under root that was saving that checkpoint and
  did not finish is reopened instead, with `config` merged into its own: one run, one
  record, its train_log.csv continuing where the state was saved.
  """
  record = _unfinished(Path(root), resume_of) if resume_of else None
  if record is None:
    record = RunRecord(root, name)
    record.write_config(config)
    return record
  resumed = record.config().get("resumed")
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  record.write_config({**config, "resumed": [*(resumed if isinstance(resumed, list) else []),
                                             now]}, merge=True)
  return record


def _unfinished(root: Path, checkpoint: str) -> RunRecord | None:
  """The newest record under root that was saving `checkpoint` and did not finish."""
  found = []
  for folder in sorted(root.iterdir()) if root.is_dir() else ():
    if not (folder / CONFIG).is_file():
      continue
    record = RunRecord(_path=folder)
    cfg = record.config()
    if cfg.get("checkpoint") == checkpoint and record.status() in ("killed", "interrupted",
                                                                   "failed"):
      found.append((str(cfg.get("started") or ""), record))
  return max(found, key=lambda f: f[0])[1] if found else None


def command_line() -> str:
  """The command that runs this process, as a shell would take it (a record's `command`)."""
  return shlex.join([sys.executable, *sys.argv])


_SUMMARY_COLUMNS = (("n", "n"), ("accuracy", "accuracy"), ("precision", "precision"),
                    ("recall", "recall"), ("F", "f_measure"), ("ROC-AUC", "auc"),
                    ("Brier", "brier"), ("ECE", "ece"))


def run_summary(record: RunRecord, blocks: str = "") -> str:
  """summary.md of a training run, from the record's own files: what ran on what, how it did."""
  cfg = record.config()
  recipe = cfg.get("train_config") if isinstance(cfg.get("train_config"), dict) else {}
  loss = recipe.get("loss") if isinstance(recipe.get("loss"), dict) else {}
  facts = [("status", record.status()), ("command", f"`{cfg['command']}`" if cfg.get("command") else ""),
           ("dataset", cfg.get("dataset")), ("model", cfg.get("model")),
           ("weights", cfg.get("weights")), ("checkpoint", cfg.get("checkpoint")),
           ("recipe", ", ".join(f"{k} {recipe[k]}" for k in ("lr", "batch_size", "steps",
                                                            "trainable", "optimizer", "seed")
                                if k in recipe) + (f", loss {loss.get('kind')}" if loss else "")),
           ("predictions", cfg.get("predictions_of"))]
  lines = [f"# {record.name}", ""] + [f"- **{k}**: {v}" for k, v in facts if v] + [""]
  rows = [(stage, name, m) for stage, sets in record.eval_metrics().items()
          if isinstance(sets, dict) for name, m in sets.items()
          if isinstance(m, dict) and "tp" in m]
  if rows:
    lines += ["## Metrics (95 % intervals in brackets)", "",
              "| stage | set | " + " | ".join(c for c, _ in _SUMMARY_COLUMNS) + " |",
              "|---|---|" + "---:|" * len(_SUMMARY_COLUMNS)]
    lines += [f"| {stage} | {name} | " + " | ".join(_cell(m, key) for _, key in _SUMMARY_COLUMNS)
              + " |" for stage, name, m in rows]
    lines.append("")
  if blocks:
    lines += ["## Result blocks", "", "```", blocks.rstrip("\n"), "```", ""]
  return "\n".join(lines)


def _cell(m: dict[str, Any], key: str) -> str:
  value = finite(m.get(key))
  if value is None:
    return "-"
  if key == "n":
    return str(int(value))
  ci = m.get(f"{key}_ci")
  if isinstance(ci, list) and len(ci) == 2 and all(finite(v) is not None for v in ci):
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"
  return f"{value:.3f}" if key not in ("brier", "ece") else f"{value:.4f}"


def summary_markdown(name: str, content: dict[str, Any]) -> str:
  """`# name` then one table per section; nested dicts become `## key` sections."""
  lines = [f"# {name}", ""]
  flat = {k: v for k, v in content.items() if not isinstance(v, dict)}
  if flat:
    lines += _table(flat)
  for key, value in content.items():
    if isinstance(value, dict):
      lines += [f"## {key}", ""] + _table(value)
  return "\n".join(lines)


def _table(d: dict[str, Any]) -> list[str]:
  rows = ["| key | value |", "| --- | --- |"]
  for k, v in d.items():
    text = json.dumps(plain(v), ensure_ascii=False) if isinstance(v, (dict, list)) else str(v)
    rows.append(f"| {k} | {text.replace('|', '/')} |")
  return rows + [""]


def _num(value: Any) -> float | str:
  if value is None:
    return ""
  return float(value)


def finite(value: Any) -> float | None:
  """float(value) if it is a finite number, else None."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


def _one_line(err: BaseException) -> str:
  return " ".join(str(err).split())
