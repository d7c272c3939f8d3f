"""Leaderboard of experiments/: markdown, a static sortable HTML page, study history.

One row per run folder (experiments/<run>/ with config.yaml or
eval_metrics.json) and per study trial that has no folder. A row's numbers:
the `cv` block of eval_metrics.json when there is one (score = mean of the
CV metric, with its std); else the last stage's metrics (its `valid` set
when the stage holds several sets); a trial without either shows the score
recorded in the study. Rows are grouped by what they were evaluated on (a
split's valid set, a CV folder): numbers from different sets are never ranked
in one column. In each group the best row (highest by the sort metric, among
finished runs that answer both ways) is marked, settings equal in every row
are said once above the table and every setting that differs between rows is a
column (the recipe, -2, the prompt, ...), so a page fits a laptop screen and
hides nothing. Runs show their status (finished, interrupted, failed, killed,
running); trials their study state. A run whose predictions are all one answer
is flagged (`metrics.one_class`, the CV summaries' test too). The `vs ★`
column says whether a row's difference from the marked row is inside the
noise: 17-compare.py's paired test on the two records' stored predictions.
A metric shows its 95 % interval beside it, `0.8000 [0.49, 0.94]`, when the
record has one (`<metric>_ci` in a stage block, `interval` in a cv block).
A run's numbers are of its `final_stage` (config.yaml) when it names one.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import html
from pathlib import Path
from typing import Any, Sequence

from palijudge import files, learn, metrics as metrics_lib, predictions
from palijudge.evaluation import compare
from palijudge.errors import UserError, where
from palijudge.configs import ALIASES, METRIC_COLUMNS, SETTINGS, SORT_KEYS, EvalConfig  # noqa: F401
from palijudge.experiments import plots as plots
from palijudge.experiments.records import RunRecord, finite

# Besides SETTINGS, a row's settings are every other field of the recipe (train_config)
# and the learn and evaluation flags that change what a run does, but these: they say how
# a run reports or saves, not what it is.
_NOT_SETTINGS = {"print_every", "save_every", "resume", "gallery", "gallery_max", "json",
                 "eval_batch", "max_new"}
_RESULT_FLAGS = ({f.name for c in (learn.LearnConfig, EvalConfig) for f in dataclasses.fields(c)}
                 | {"quantize"}) - _NOT_SETTINGS


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  kind: str                        # run | cv | trial
  link: str                        # relative link (summary.md or folder), "" if none
  settings: dict[str, Any]
  metrics: dict[str, float | None]  # METRIC_COLUMNS keys, plus "std" of the score
  state: str = ""                  # trials: COMPLETE | PRUNED | FAIL | RUNNING
  plots: tuple[tuple[str, str], ...] = ()  # (kind, relative path)
  note: str = ""
  intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
  model: str = ""
  dataset: str = ""
  evaluated_on: str = ""           # The group: a split's set, or a CV folder.
  events: str = ""                 # Relative path of the run's TensorBoard event file, if any.
  metric: str = "f_measure"        # What the score is.
  constant: str = ""               # "yes"/"no": every prediction was that answer.
  predictions: str = ""            # The record's predictions.jsonl, if it has one.


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d} if prefix else {}
  out: dict[str, Any] = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def settings_of(config: dict[str, Any]) -> dict[str, Any]:
  """Settings from a (possibly nested) config: each of SETTINGS by its key or last dotted
  part, then every other field of train_config and every result-changing learn/evaluation
  flag (in `args`, or at the top of a flat search config), by its name."""
  flat = _flat(config)
  out = {}
  for key, _ in SETTINGS:
    for name in ALIASES.get(key, (key,)):
      hit = next((v for k, v in flat.items() if k == name or k.endswith("." + name)), None)
      if hit is not None and not isinstance(hit, (dict, list)):
        out[key] = hit
        break
  known = {name for key, _ in SETTINGS for name in ALIASES.get(key, (key,))}
  for path, value in flat.items():
    head, _, rest = path.partition(".")
    if (head == "train_config" and rest) or (head == "args" and rest in _RESULT_FLAGS):
      name = rest
    elif not rest and path in _RESULT_FLAGS:
      name = path
    else:
      continue
    if name in known or name.rsplit(".", 1)[-1] in known or name in _NOT_SETTINGS:
      continue
    out.setdefault(name, value if not isinstance(value, (dict, list)) else str(value))
  return out


def title(key: str) -> str:
  """A setting's column title."""
  return dict(SETTINGS).get(key, key)


def headline(ev: dict[str, Any], metric: str = "f_measure", stage: str | None = None
             ) -> tuple[str, dict[str, float | None]]:
  """(kind, metrics) of a run from its eval_metrics.json content (`stage`: its final one)."""
  cv = _cv_block(ev)
  if cv is not None:
    means = cv.get("means") or {}
    out = {k: finite(means.get(k)) for k, _ in METRIC_COLUMNS[1:]}
    return "cv", {**out, "score": finite(cv.get("score")), "std": finite(cv.get("std"))}
  block = _last_block(ev, stage)[1]
  if block:
    out = {k: finite(block.get(k)) for k, _ in METRIC_COLUMNS[1:]}
    return "run", {**out, "score": out.get(metric), "std": None}
  return "run", {"score": None, "std": None}


def intervals_of(ev: dict[str, Any], metric: str = "f_measure", stage: str | None = None
                 ) -> dict[str, tuple[float, float]]:
  """The 95 % intervals headline's numbers carry (cv: the score's t interval over folds)."""
  cv = _cv_block(ev)
  if cv is not None:
    raw = {"score": cv.get("interval")}
  else:
    block = _last_block(ev, stage)[1] or {}
    raw = {k: block.get(f"{k}_ci") for k, _ in METRIC_COLUMNS[1:]}
    raw["score"] = raw.get(metric)
  out = {}
  for key, pair in raw.items():
    bounds = [finite(x) for x in pair] if isinstance(pair, list) and len(pair) == 2 else [None]
    if None not in bounds:
      out[key] = (bounds[0], bounds[1])
  return out


def _cv_block(ev: dict[str, Any]) -> dict[str, Any] | None:
  cv = ev.get("cv")
  return cv if isinstance(cv, dict) and "score" in cv else None


def _last_block(ev: dict[str, Any], final: str | None = None
                ) -> tuple[str, dict[str, Any] | None]:
  """(set name, metrics) of the `final` stage when ev has it (the run's kept stage), else of
  the last stage written (its `valid` set when the stage holds several)."""
  stages = list(reversed(list(ev.items())))
  if isinstance(final, str) and isinstance(ev.get(final), dict):
    stages.insert(0, (final, ev[final]))
  for stage, block in stages:
    if stage == "trial" or not isinstance(block, dict):
      continue
    name = ""
    if not any(k in block for k, _ in METRIC_COLUMNS):
      subs = [(k, v) for k, v in block.items() if isinstance(v, dict) and "valid" in k]
      name, block = subs[-1] if subs else ("", None)
    if block:
      return name, block
  return "", None


def _text(value: Any) -> str:
  return value if isinstance(value, str) else ""


def evaluated_on(cfg: dict[str, Any], ev: dict[str, Any], kind: str) -> str:
  """What a row's numbers were measured on: `dataset/set1 valid.jsonl`, `cv5 (CV)`."""
  args = cfg.get("args") if isinstance(cfg.get("args"), dict) else {}
  cv = _text(cfg.get("cv")) or _text(args.get("cv"))
  if kind == "cv" or (kind == "trial" and cv):
    return f"{cv or _text(cfg.get('dataset')) or 'unrecorded folds'} (CV)"
  name, block = _last_block(ev, cfg.get("final_stage"))
  where_from = _text(cfg.get("dataset")) or _text(args.get("dataset")) or "unknown data"
  return f"{where_from} {name}".strip() if block else f"{where_from} (not evaluated)"


def row_of(record: RunRecord, root: Path, metric: str = "f_measure") -> Row:
  cfg, ev = record.config(), record.eval_metrics()
  metric, final = str(cfg.get("metric") or metric), cfg.get("final_stage")
  kind, metrics = headline(ev, metric, final)
  trial = ev.get("trial") if isinstance(ev.get("trial"), dict) else None
  state, note = "", ""
  if "trial" in cfg and "study" in cfg:
    kind, state = "trial", (trial or {}).get("state", "RUNNING")
    note = (trial or {}).get("reason") or ""
    if metrics["score"] is None and trial:
      metrics = {**metrics, "score": finite(trial.get("value"))}
  else:
    state = record.status()
    note = _text(cfg.get("error"))
  rel = record.path.relative_to(root).as_posix()
  link = f"{rel}/summary.md" if record.file("summary.md").exists() else f"{rel}/"
  figs = tuple((k, f"{rel}/{p.name}") for k, p in record.plot_files().items())
  events = record.event_files()
  cv = _cv_block(ev)
  preds = record.file("predictions.jsonl")
  return Row(record.name, kind, link, settings_of(cfg), metrics, state, figs, note,
             intervals_of(ev, metric, final), _text(cfg.get("model")), _text(cfg.get("dataset")),
             evaluated_on(cfg, ev, kind), events=f"{rel}/{events[-1].name}" if events else "",
             metric=_text(cv.get("metric")) if cv else metric,
             constant=constant_answer(ev, final, preds),
             predictions=str(preds) if preds.is_file() else "")


def constant_answer(ev: dict[str, Any], final: str | None, preds: Path) -> str:
  """"yes"/"no" when every prediction of the run was that answer (a run that learned
  nothing), "" otherwise: `metrics.one_class` on the headline block's counts (a CV block
  carries its answer), else on the stored predictions."""
  cv = _cv_block(ev)
  if cv is not None:
    return _text(cv.get("one_class"))
  block = _last_block(ev, final)[1]
  if block is None or not {"tp", "fp", "tn", "fn"} <= set(block):
    try:
      rows = predictions.read(preds) if preds.is_file() else []
    except UserError:  # Not readable as predictions: nothing to say.
      rows = []
    block = metrics_lib.Confusion.from_labels([r.label for r in rows],
                                              [r.pred for r in rows]).to_dict() if rows else None
  return (metrics_lib.one_class([block]) or "") if block else ""


def collect(root: str | Path = "experiments", render_plots: bool = True,
            metric: str = "f_measure") -> list[Row]:
  """One Row per run folder under root (PNGs rendered where missing)."""
  root = Path(root)
  if not root.is_dir():
    raise UserError(f"{where(root)}: no experiments folder")
  rows = []
  for d in sorted(p for p in root.iterdir() if p.is_dir()):
    if not ((d / "config.yaml").exists() or (d / "eval_metrics.json").exists()):
      continue
    rec = RunRecord.load(d)
    if render_plots and not rec.plot_files():
      rec.plots()
    rows.append(row_of(rec, root, metric))
  return rows


def study_rows(study, known: set[str] = frozenset()) -> list[Row]:
  """Rows for a study's trials whose record folder is not in `known`."""
  rows = []
  for t in study.get_trials(deepcopy=False):
    folder = Path(t.user_attrs.get("record") or "").name
    name = folder or f"{study.study_name}-trial-{t.number:03d}"
    if name in known:
      continue
    value = t.value if t.state.name in ("COMPLETE", "PRUNED") else None
    rows.append(Row(name, "trial", "", settings_of(t.user_attrs.get("config") or t.params),
                    {"score": finite(value), "std": None}, t.state.name, (),
                    t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or "",
                    model=_text(study.user_attrs.get("model")),
                    evaluated_on=f"{_text(t.user_attrs.get('cv')) or 'unrecorded folds'} (CV)",
                    metric=_text(study.user_attrs.get("metric")) or "f_measure"))
  return rows


def sort_rows(rows: Sequence[Row], key: str = "score") -> list[Row]:
  """Metrics descending, names and settings ascending; missing values last."""
  if key not in SORT_KEYS:
    raise UserError(f"--sort must be one of {', '.join(SORT_KEYS)}, got {key!r}")
  value = lambda r: r.name if key == "name" else (
      r.metrics.get(key) if key in dict(METRIC_COLUMNS) else r.settings.get(key))
  present = [r for r in rows if value(r) is not None]
  missing = [r for r in rows if value(r) is None]
  desc = key in dict(METRIC_COLUMNS)
  try:
    present.sort(key=value, reverse=desc)
  except TypeError:  # mixed types in a setting column
    present.sort(key=lambda r: str(value(r)), reverse=desc)
  return present + missing


def best_of(rows: Sequence[Row], key: str = "score") -> Row | None:
  """The best finished row by `key` (a metric; else the score); a row that gave one answer
  to everything is never the best, whatever its score."""
  key = key if key in dict(METRIC_COLUMNS) else "score"
  scored = [r for r in rows if r.metrics.get(key) is not None and not r.constant
            and r.state in ("", "COMPLETE", "finished")]
  return max(scored, key=lambda r: r.metrics[key]) if scored else None


def fmt(key: str, v: Any) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.3g}" if key == "lr" else f"{v:.4f}" if key in dict(METRIC_COLUMNS) else f"{v:g}"
  return str(v)


def _score(r: Row) -> str:
  s, std = r.metrics.get("score"), r.metrics.get("std")
  return fmt("score", s) + (f" ± {std:.4f}" if s is not None and std is not None else "") \
      + _interval(r, "score")


def _interval(r: Row, key: str) -> str:
  """` [0.49, 0.94]`: the 95 % interval of a shown metric, when the record has one."""
  iv = r.intervals.get(key)
  return "" if iv is None or r.metrics.get(key) is None else f" [{iv[0]:.2f}, {iv[1]:.2f}]"


def _metric(r: Row, key: str) -> str:
  return fmt(key, r.metrics.get(key)) + _interval(r, key)


def grouped(rows: Sequence[Row], sort: str = "score") -> list[tuple[str, list[Row]]]:
  """(evaluated on, sorted rows) per group, groups by name."""
  names = sorted({r.evaluated_on for r in rows})
  return [(g, sort_rows([r for r in rows if r.evaluated_on == g], sort)) for g in names]


def split_settings(rows: Sequence[Row]) -> tuple[list[tuple[str, str]], dict[str, Any]]:
  """(settings that differ between rows, as columns; those equal in every row, said once):
  every setting any row has, SETTINGS first, so none that differs is hidden."""
  named = [k for k, _ in SETTINGS]
  keys = named + sorted({k for r in rows for k in r.settings} - set(named))
  varying, common = [], {}
  for key in keys:
    values = {repr(r.settings.get(key)) for r in rows}
    if len(values) > 1:
      varying.append((key, title(key)))
    elif rows and rows[0].settings.get(key) is not None:
      common[key] = rows[0].settings[key]
  return varying, common


_SAID = {k for k, _ in SETTINGS} | {"prompt"}  # Equal settings said by name above a table.


def _common_line(common: dict[str, Any]) -> str:
  """The main settings equal in every row by name; how many others are equal too."""
  said = [f"{title(k)} {fmt(k, v)}" for k, v in common.items() if k in _SAID]
  rest = len(common) - len(said)
  more = f" ({rest} other setting{'s' if rest > 1 else ''} too: see config.yaml)" if rest else ""
  return f"Same in every row: {', '.join(said) or 'nothing named'}{more}." if common else ""


def noise_marks(rows: Sequence[Row], best: Row | None, resamples: int = 2000
                ) -> dict[str, str]:
  """Per row name, its difference from `best` as 17-compare.py judges two prediction files:
  `noise` when nothing is detectable (exact McNemar p > 0.05 and every paired bootstrap
  interval of precision, recall and ROC-AUC holds 0), `beyond` when something is, `n/a`
  when the two records hold different examples; rows without stored predictions get none."""
  if best is None or not best.predictions:
    return {}
  try:
    star = compare.Side(predictions.read(best.predictions))
  except UserError:
    return {}
  out = {}
  for r in rows:
    if r is best or not r.predictions:
      continue
    try:
      c = compare.compare(r.evaluated_on, star, compare.Side(predictions.read(r.predictions)),
                          resamples=resamples)
    except UserError:  # Other examples (or an unreadable file): no paired test.
      out[r.name] = "n/a"
      continue
    differs = c.mcnemar.pvalue <= compare.ALPHA or any(d.detectable for d in c.differences)
    out[r.name] = "beyond" if differs else "noise"
  return out


@dataclasses.dataclass(frozen=True)
class Table:
  """One group's table: its rows, the marked one, the setting columns, what is said once."""
  rows: list[Row]
  best: Row | None
  varying: list[tuple[str, str]]
  common: dict[str, Any]
  marks: dict[str, str]   # noise_marks
  metric: str             # The score's metric when every row shares it, else "".

  @classmethod
  def of(cls, rows: list[Row], sort: str) -> Table:
    best = best_of(rows, sort)
    varying, common = split_settings(rows)
    metrics = {r.metric for r in rows}
    return cls(rows, best, varying, common, noise_marks(rows, best),
               metrics.pop() if len(metrics) == 1 else "")

  @property
  def metric_columns(self) -> list[tuple[str, str]]:
    """The metric columns after the score, less the one the score already is."""
    return [(k, t) for k, t in METRIC_COLUMNS[1:] if k != self.metric]

  def head(self) -> list[str]:
    score = f"score ({_METRIC_NAMES.get(self.metric, self.metric)})" if self.metric else "score"
    return (["", "run", "kind", "state", "model"] + [t for _, t in self.varying] + [score]
            + [t for _, t in self.metric_columns] + ["vs ★", "plots"])

  def score(self, r: Row) -> str:
    """The score, its metric named in the cell when the rows' metrics differ."""
    return _score(r) if self.metric else f"{_METRIC_NAMES.get(r.metric, r.metric)} {_score(r)}"

  @functools.cached_property
  def codes(self) -> dict[str, dict[Any, str]]:
    """Long text settings that differ (a prompt) as short codes, #1, #2, ..., by setting:
    the cells show the code, `legend` the text, so a table still fits a laptop screen."""
    out = {}
    for key, _ in self.varying:
      values = [r.settings.get(key) for r in self.rows]
      if any(isinstance(v, str) and len(v) > _LONG for v in values):
        distinct = [v for v in dict.fromkeys(values) if v is not None]
        out[key] = {v: f"#{i}" for i, v in enumerate(distinct, 1)}
    return out

  def setting(self, r: Row, key: str) -> str:
    value = r.settings.get(key)
    return self.codes.get(key, {}).get(value) or fmt(key, value)

  def legend(self) -> list[str]:
    """One line per coded setting: `prompt: #1 = ...; #2 = ...`."""
    return [f"{title(key)}: " + "; ".join(f"{code} = {v}" for v, code in codes.items())
            for key, codes in self.codes.items()]


_LONG = 16  # Characters of a text setting beyond which its cells show a code.
_METRIC_NAMES = dict(METRIC_COLUMNS[1:])


def _state(r: Row) -> str:
  """The status, and the warning of a run that answered one way only."""
  return ", ".join(x for x in (r.state, f"always {r.constant}!" if r.constant else "") if x)


_INTRO = ("★ marks the best finished row of each group (never a run that gave one answer to "
          "everything: its state says `always yes!` or `always no!`). score = the CV metric's "
          "mean ± std over the folds (or the run's valid metric), its metric named in the "
          "header. [low, high] = 95 % interval (Wilson; bootstrap for AUC; Student t over the "
          "folds for a CV score). vs ★ = is the row's difference from ★ inside the noise? "
          "17-compare.py's paired test on the two runs' stored predictions, example by example "
          "(exact McNemar; paired bootstrap of precision, recall and ROC-AUC): noise = nothing "
          "detectable, beyond = a difference beyond the noise, n/a = not the same examples.")


_CURVES = ("tensorboard links a run's TensorBoard event file (loss, lr, grad norm per step; "
           "eval/<set>/<metric> per stage): view every run with `tensorboard --logdir experiments`.")


def tables(rows: Sequence[Row], sort: str = "score") -> list[tuple[str, Table]]:
  """(evaluated on, Table) per group: made once for both pages (the noise tests take time)."""
  return [(group, Table.of(members, sort)) for group, members in grouped(rows, sort)]


def markdown(rows: Sequence[Row], sort: str = "score", histories: Sequence[str] = (),
             made: list[tuple[str, Table]] | None = None) -> str:
  sort_rows(rows, sort)  # Validates the key.
  lines = ["# Leaderboard", "", f"Sorted by {sort}. {_INTRO}", ""]
  for group, t in made if made is not None else tables(rows, sort):
    members = t.rows
    head = t.head()
    lines += [f"## Evaluated on {group}", ""] + ([_common_line(t.common), ""] if t.common else [])
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in members:
      name = f"[{r.name}]({r.link})" if r.link else r.name
      cells = ["★" if r is t.best else "", name, r.kind, _state(r), r.model or "-"]
      cells += [t.setting(r, k) for k, _ in t.varying]
      cells += [t.score(r)] + [_metric(r, k) for k, _ in t.metric_columns]
      cells.append(t.marks.get(r.name, ""))
      cells.append(" ".join(f"[{k}]({p})" for k, p in r.plots))
      lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += [""] + [f"{line}  " for line in t.legend()] + ([""] if t.legend() else [])
  lines += [f"![study history]({h})" for h in histories]
  return "\n".join(lines) + "\n"


# Narrow enough for a 1366 px laptop screen: small type, intervals under their value,
# names and plot links allowed to wrap.
_CSS = ("body{font-family:sans-serif;margin:1em;max-width:1340px}"
        "table{border-collapse:collapse;font-size:12px;margin-bottom:1.5em}"
        "th,td{border:1px solid #ccc;padding:2px 5px;text-align:right;white-space:nowrap}"
        "th{cursor:pointer;background:#f3f3f3}td.t{text-align:left;white-space:normal;"
        "max-width:16em;overflow-wrap:anywhere}small{color:#666}"
        "tr.best{background:#fff3c4;font-weight:bold}"
        "tr.FAIL,tr.PRUNED,tr.failed,tr.killed,tr.interrupted{color:#888}"
        "tr.constant td:nth-child(4){color:#b00;font-weight:bold}")
_JS = """document.querySelectorAll('th').forEach(th => th.onclick = () => {
  const i = th.cellIndex, body = th.closest('table').tBodies[0], rows = [...body.rows];
  const desc = th.dataset.desc = th.dataset.desc === '1' ? '0' : '1';
  const val = r => r.cells[i].dataset.v, num = v => v !== '' && !isNaN(v);
  rows.sort((a, b) => { const x = val(a), y = val(b);
    if (x === '' || y === '') return (x === '') - (y === '');
    const c = num(x) && num(y) ? x - y : x.localeCompare(y); return desc === '1' ? -c : c; });
  rows.forEach(r => body.appendChild(r)); });"""


def _td(text: str, sort_value: Any = None, left: bool = False, raw: bool = False) -> str:
  v = "" if sort_value is None else str(sort_value)
  body = text if raw else html.escape(text)
  return f'<td data-v="{html.escape(v)}"{" class=t" if left else ""}>{body}</td>'


def _cell_html(r: Row, key: str) -> str:
  """A metric's value; its ± std (a CV score) and its interval on lines below."""
  value = fmt(key, r.metrics.get(key))
  std = (f"± {r.metrics['std']:.4f}" if key == "score" and r.metrics.get("std") is not None
         and r.metrics.get(key) is not None else "")
  return "<br>".join([html.escape(value)] + [f"<small>{html.escape(x)}</small>" for x in
                                              (std, _interval(r, key).strip()) if x])


def _html_row(r: Row, t: Table) -> str:
  link = (f'<a href="{html.escape(r.link)}">{html.escape(r.name)}</a>' if r.link
          else html.escape(r.name))
  best = r is t.best
  cells = [_td("★" if best else "", 1 if best else 0),
           _td(link, r.name, left=True, raw=True), _td(r.kind, r.kind, True),
           _td(_state(r), r.state, True), _td(r.model or "-", r.model, True)]
  cells += [_td(t.setting(r, k), r.settings.get(k), isinstance(r.settings.get(k), str))
            for k, _ in t.varying]
  score = _cell_html(r, "score") if t.metric else \
      f"{html.escape(_METRIC_NAMES.get(r.metric, r.metric))} {_cell_html(r, 'score')}"
  cells += [_td(score, r.metrics.get("score"), raw=True)]
  cells += [_td(_cell_html(r, k), r.metrics.get(k), raw=True) for k, _ in t.metric_columns]
  cells.append(_td(t.marks.get(r.name, ""), t.marks.get(r.name), True))
  figs = " ".join(f'<a href="{html.escape(p)}">{html.escape(k)}</a>' for k, p in r.plots)
  if r.events:  # The curves in TensorBoard: `tensorboard --logdir experiments`.
    figs += f' <a href="{html.escape(r.events)}" title="TensorBoard event file">tensorboard</a>'
  cells.append(_td(figs, len(r.plots), left=True, raw=True))
  title_ = f' title="{html.escape(r.note)}"' if r.note else ""
  cls = " ".join(c for c in ("best" if best else "", r.state,
                             "constant" if r.constant else "") if c)
  return f'<tr class="{cls}"{title_}>' + "".join(cells) + "</tr>"


def html_page(rows: Sequence[Row], sort: str = "score", histories: Sequence[str] = (),
              made: list[tuple[str, Table]] | None = None) -> str:
  sort_rows(rows, sort)  # Validates the key.
  out = ["<!doctype html><html><head><meta charset=utf-8><title>palijudge leaderboard</title>",
         f"<style>{_CSS}</style></head><body><h1>Leaderboard</h1>",
         f"<p>Generated {datetime.datetime.now():%Y-%m-%d %H:%M}. Click a column to sort. "
         f"{html.escape(_INTRO)} {html.escape(_CURVES)}</p>"]
  for group, t in made if made is not None else tables(rows, sort):
    members = t.rows
    out.append(f"<h2>Evaluated on {html.escape(group)}</h2>")
    if t.common:
      out.append(f"<p>{html.escape(_common_line(t.common))}</p>")
    out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.head())
               + "</tr></thead><tbody>")
    out += [_html_row(r, t) for r in members]
    out.append("</tbody></table>")
    out += [f"<p><small>{html.escape(line)}</small></p>" for line in t.legend()]
  out += [f'<h2>Study history</h2><img src="{html.escape(h)}" alt="study history" '
          f'style="max-width:100%">' for h in histories]
  out.append(f"<script>{_JS}</script></body></html>")
  return "\n".join(out) + "\n"


def history_png(study, root: Path) -> Path:
  """experiments/study_history_<study>.png: score per trial and best so far."""
  trials = study.get_trials(deepcopy=False)
  values = [t.value if t.state.name in ("COMPLETE", "PRUNED") else None for t in trials]
  return plots.render_history([t.number for t in trials], values, [t.state.name for t in trials],
                              root / f"study_history_{study.study_name}.png",
                              f"CV {_text(study.user_attrs.get('metric')) or 'score'}")


def load_studies(storage: str | None, root: Path) -> list:
  """Every study in `storage` (default: root/study.db when it exists)."""
  if storage is None:
    db = root / "study.db"
    if not db.is_file():
      return []
    storage = f"sqlite:///{db}"
  import optuna  # pylint: disable=import-outside-toplevel
  from palijudge.experiments import tune  # pylint: disable=import-outside-toplevel
  storage = tune.storage_url(storage)  # a file path, or postgresql:// with our driver
  try:
    names = optuna.study.get_all_study_names(storage=storage)
    return [optuna.load_study(study_name=n, storage=storage) for n in names]
  except Exception as e:  # bad URL, not an optuna database, ...
    raise UserError(f"{storage}: cannot read studies ({' '.join(str(e).split())[:200]})") \
        from None


@dataclasses.dataclass(frozen=True)
class Built:
  markdown: Path
  html: Path
  histories: list[Path]
  rows: int


def build(root: str | Path = "experiments", sort: str = "score", storage: str | None = None,
          render_plots: bool = True) -> Built:
  """Writes root/leaderboard.md, root/leaderboard.html and the study history PNGs."""
  root = Path(root)
  rows = collect(root, render_plots)
  sort_rows(rows, sort)  # validates the key before anything is written
  studies = load_studies(storage, root)
  histories, known = [], {r.name for r in rows}
  for study in studies:
    rows += study_rows(study, known)
    if study.get_trials(deepcopy=False):
      histories.append(history_png(study, root))
  rel = [h.relative_to(root).as_posix() for h in histories]
  made = tables(rows, sort)
  md = files.write_text(root / "leaderboard.md", markdown(rows, sort, rel, made))
  page = files.write_text(root / "leaderboard.html", html_page(rows, sort, rel, made))
  return Built(md, page, histories, len(rows))


# --- What `06-tune.py status` prints -----------------------------------------------

STATUS_KEYS = ("lr", "loss", "focal_alpha", "focal_gamma", "bce_weight", "focal_weight")


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


def study_status(study, now: datetime.datetime | None = None) -> str:
  """One line per trial, the best (its full command line), trials of the last 7 days."""
  from palijudge.experiments import tune
  trials = study.get_trials(deepcopy=False)
  retried = {t.system_attrs["retry_history"][-1]: t.number for t in trials
             if "retry_history" in t.system_attrs}
  lines = [f"study {study.study_name}: {len(trials)} trial(s)",
           f"{'trial':>5}  {'state':8} {'score':>7}  settings"]
  for t in trials:
    cfg = settings_of(t.user_attrs.get("config") or t.params)
    text = " ".join(f"{k}={fmt(k, cfg[k])}" for k in STATUS_KEYS if k in cfg)
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
