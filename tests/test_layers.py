"""The package's layering and its import table.

`LAYERS`, bottom to top, is what docs' Architecture section shows (`architecture_block`
renders it): no module imports a layer above its own. `ALLOWED` names, per module, the
package modules it imports; an import not in it fails here, so a new dependency is a
reviewed line in this table, not an accident. `python tests/test_layers.py` prints both
as they should read for the current tree (to paste after a deliberate change).
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "palijudge"
# (label, modules, what they do), bottom to top.
LAYERS = [
    ("errors, files, options, metrics, progress, inputs, evaluation/ thresholds and stats",
     {"errors", "files", "options", "metrics", "evaluation.thresholds", "progress",
      "evaluation.stats", "inputs"},
     "bottom: UserError; project folders, the one atomic writer (which never replaces an "
     "input), locks, sha256; the options layer (option() and group() fields become "
     "command-line flags, the only argparse); confusion, AUC and calibration; threshold "
     "picking; the one progress bar (tqdm, stderr); intervals, paired tests and spreads "
     "(Wilson, bootstrap, McNemar, t; no jax); Inputs, what the model reads"),
    ("configs", {"configs"},
     "every concern's config, jax-free (LoadConfig, LossConfig, TrainConfig, EvalConfig and "
     "the one threshold decision, LearnConfig, JudgeConfig, StudyConfig) and the names "
     "their flags choose from: what each script's config tree composes"),
    ("data/",
     {"data.examples", "data.splits", "data.images", "data.tokenizer", "data.batch",
      "data.synthetic", "data.audit", "data.likeness", "data.templated", "data.decisions",
      "data.audit_report", "data.audit_bench"},
     "examples (JSONL/TSV, the one yes/no parser, DEFAULT_PROMPT), splits (train/valid, CV "
     "folds, group-aware), images, tokenizer, batch (typed Batch, collate, PixelCache), "
     "synthetic (demo data, the tiny tokenizer, duplicate variants), audit (duplicates and "
     "leaks: likeness the pixel checks, decisions your file, audit_report the text, templated "
     "and audit_bench the benchmark of templated ads); no model, no jax arrays"),
    ("params", {"params"},
     "parameter trees: paths, trainable-set regexes, split/merge, dtype rule, device meshes "
     "and shardings"),
    ("quantize", {"quantize"},
     "--quantize: frozen matrices as qwix QArrays (int8, int4, NF4), made leaf by leaf at "
     "load, dequantized where the model reads them; what a checkpoint records of it"),
    ("distributed, devices, phases", {"distributed", "devices", "phases"},
     "several processes (jax.distributed): each process's rows of a batch and block of a "
     "set, gathers, local views, who writes (process 0); what this process runs on (the "
     "device line, the CPU warning) and the --mesh placement policy; phase timing and the "
     "device's memory peak (--phases)"),
    ("model/",
     {"model.config", "model.vit", "model.lora", "model.gemma", "model.paligemma",
      "model.features"},
     "Flax: config (presets, JSON), vit (SigLIP), gemma (Gemma 1/2), lora (adapters, alpha), "
     "paligemma (make_attn_mask, forward, yes/no scoring, greedy decode), features (the "
     "frozen-encoder cache of image tokens, in memory and on disk)"),
    ("checkpoint", {"checkpoint"},
     "big_vision .npz files: streaming load/save, deltas over a verified base"),
    ("hf, hf_export", {"hf", "hf_export"},
     "transformers PaliGemma folders: config and tensor layouts, streamed import (cached "
     ".npz with provenance); export"),
    ("loader", {"loader"},
     "which model to load (LoadConfig, presets, checkpoints, deltas); LoadedModel and its "
     "encoder cache (feature_cache, encoder_cache)"),
    ("losses, train", {"losses", "train"},
     "objectives (LossConfig); TrainConfig, optimizer, the pure train step, the loop: guard, "
     "restarts, resume (nanodo's train.py shape)"),
    ("evaluation/ scoring, reports, prompts, gallery, probe, ensemble; predictions, infer",
     {"evaluation.gallery", "evaluation.scoring", "evaluation.reports", "evaluation.prompts",
      "predictions", "infer", "evaluation.probe", "evaluation.ensemble"},
     "scoring (p(yes), EvalResult), reports (the Result block over named sets, the picked "
     "threshold); ranking prompts (05); the one prediction-row schema "
     "and outcome filters; HTML error galleries; streaming, resumable inference; the linear "
     "probe on frozen image embeddings; what judges (a model, an ensemble, a probe)"),
    ("evaluation/ compare", {"evaluation.compare"},
     "two models on the same examples: flips, McNemar, paired intervals, the verdict; the "
     "lottery's spread and lead (17, --runs N)"),
    ("learn", {"learn"},
     "the users' iteration (03): evaluate, train (runs x stages), evaluate, save; writes run "
     "records through a small Recorder interface"),
    ("experiments/",
     {"experiments.records", "experiments.plots", "experiments.cv", "experiments.tune",
      "experiments.leaderboard"},
     "records (run folders), cv (CV runs, search objective), tune (Optuna), leaderboard, "
     "plots; nothing in the core imports them"),
    ("tools/",
     {"tools.bench", "tools.gpubench", "tools.fullsize", "tools.planner", "tools.download",
      "tools.demo", "tools.quantbench"},
     "bench, gpubench, fullsize (random full-size checkpoints), planner, download, demo, "
     "quantbench (what --quantize costs and saves)"),
    ("cli", {"cli"},
     "the scripts' one entry point (cli.run(Config, main)): the process flags, the options "
     "scripts share, process setup (GPU memory settings, compilation cache, "
     "jax.distributed), where it runs (announce) and the one error boundary "
     "(UserError/OSError -> one line, exit 2)"),
    ("resolve", {"resolve"},
     "the one step that decides, from a script's flags, the project and the checkpoints it "
     "reads: the models to load, the threshold, the data root, the checkpoint it writes, "
     "the files no output may replace, the caches"),
]
LEVEL = {m: i for i, (_, layer, _) in enumerate(LAYERS) for m in layer}

# Per module: the package modules it may import (module level or inside functions).
ALLOWED = {
    "checkpoint": "errors files model.config params",
    "cli": ("configs devices distributed errors files loader model.paligemma options params "
            "progress"),
    "configs": "errors evaluation.thresholds metrics options",
    "data.audit": ("data.decisions data.examples data.images data.likeness errors files options "
                   "progress"),
    "data.audit_bench": "data.audit data.examples data.images data.templated files",
    "data.audit_report": "data.audit data.decisions files",
    "data.batch": "data.examples data.images data.tokenizer errors inputs",
    "data.decisions": "data.examples errors",
    "data.examples": "configs errors files",
    "data.images": "configs errors",
    "data.likeness": "",
    "data.splits": "data.examples errors files",
    "data.synthetic": "configs data.images errors files",
    "data.templated": "data.synthetic files",
    "data.tokenizer": "errors",
    "devices": "params",
    "distributed": "errors",
    "errors": "",
    "evaluation.compare": ("configs data.examples errors evaluation.scoring evaluation.stats "
                           "loader predictions"),
    "evaluation.ensemble": ("configs data.batch errors evaluation.probe evaluation.scoring files "
                            "loader quantize"),
    "evaluation.gallery": "data.audit_report data.images errors files",
    "evaluation.probe": ("checkpoint configs data.examples data.images errors evaluation.reports "
                         "evaluation.scoring files loader model.features"),
    "evaluation.prompts": "data.examples errors metrics",
    "evaluation.reports": ("configs data.batch data.examples distributed evaluation.gallery "
                           "evaluation.scoring evaluation.thresholds loader metrics model.features"),
    "evaluation.scoring": ("configs data.batch data.examples data.images data.tokenizer "
                           "distributed evaluation.stats loader metrics model.features "
                           "model.paligemma params progress"),
    "evaluation.stats": "metrics",
    "evaluation.thresholds": "errors metrics",
    "experiments.cv": ("configs data.examples data.splits errors evaluation.stats "
                       "experiments.records learn loader losses metrics options predictions train"),
    "experiments.leaderboard": ("configs errors evaluation.compare experiments.plots "
                                "experiments.records experiments.tune files learn metrics "
                                "predictions"),
    "experiments.plots": "files metrics",
    "experiments.records": "data.examples errors experiments.plots files metrics params",
    "experiments.tune": "configs errors experiments.cv experiments.records files losses train",
    "files": "errors",
    "hf": "checkpoint errors files model.config model.paligemma params",
    "hf_export": "errors hf model.config params",
    "infer": "configs data.examples errors evaluation.scoring files loader predictions progress",
    "inputs": "",
    "learn": ("checkpoint configs data.batch data.examples distributed errors evaluation.compare "
              "evaluation.probe evaluation.reports evaluation.scoring files loader metrics "
              "model.lora params phases predictions quantize train"),
    "loader": ("checkpoint configs data.synthetic data.tokenizer devices distributed errors files "
               "hf model.config model.features model.lora model.paligemma params quantize"),
    "losses": "configs data.batch model.paligemma",
    "metrics": "",
    "model.config": "errors",
    "model.features": "data.batch data.examples errors files model.paligemma params progress",
    "model.gemma": "model.config model.lora model.vit quantize",
    "model.lora": "params quantize",
    "model.paligemma": "inputs model.config model.gemma model.lora model.vit params",
    "model.vit": "model.config quantize",
    "options": "",
    "params": "configs errors",
    "phases": "",
    "predictions": "data.examples errors evaluation.stats files metrics",
    "progress": "",
    "quantize": "configs errors params",
    "resolve": ("checkpoint cli configs data.audit data.decisions data.examples data.splits errors "
                "evaluation.ensemble evaluation.probe files loader"),
    "tools.bench": ("checkpoint configs data.batch data.examples data.splits data.synthetic errors "
                    "evaluation.scoring learn loader losses model.config model.paligemma params "
                    "train"),
    "tools.demo": ("configs data.examples data.splits data.synthetic errors evaluation.scoring "
                   "files learn loader train"),
    "tools.download": "errors files hf progress",
    "tools.fullsize": "checkpoint data.synthetic errors model.paligemma params",
    "tools.gpubench": ("configs data.batch errors losses model.config model.lora model.paligemma "
                       "params phases tools.fullsize tools.planner train"),
    "tools.planner": "data.batch model.config model.lora model.paligemma params quantize train",
    "tools.quantbench": ("configs data.examples data.synthetic evaluation.scoring loader params "
                         "tools.bench"),
    "train": ("checkpoint configs data.batch data.examples distributed errors files loader losses "
              "model.features model.lora model.paligemma params progress quantize"),
}


def _modules() -> list[str]:
  return sorted(str(p.relative_to(SRC).with_suffix("")).replace("/", ".")
                for p in SRC.rglob("*.py") if p.name != "__init__.py")


def _imports(module: str) -> set[str]:
  tree = ast.parse((SRC / (module.replace(".", "/") + ".py")).read_text())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("palijudge"):
      base = node.module[len("palijudge."):] if node.module != "palijudge" else ""
      for alias in node.names:
        name = f"{base}.{alias.name}" if base else alias.name
        out.add(name if name in LEVEL else base)
    elif isinstance(node, ast.Import):
      out |= {a.name[len("palijudge."):] for a in node.names if a.name.startswith("palijudge.")}
  return {m for m in out if m and m != module}


def _allowed(module: str) -> set[str]:
  return set(ALLOWED.get(module, "").split())


def test_every_module_has_a_layer_and_a_row():
  assert set(_modules()) == set(LEVEL), set(_modules()) ^ set(LEVEL)
  assert set(_modules()) == set(ALLOWED), set(_modules()) ^ set(ALLOWED)


def test_the_table_imports_nothing_upward():
  """The table itself keeps to the layers: no row may grant an import from above."""
  up = {m: sorted(d for d in _allowed(m) if LEVEL.get(d, len(LAYERS)) > LEVEL[m])
        for m in ALLOWED}
  assert not {m: d for m, d in up.items() if d}


@pytest.mark.parametrize("module", _modules())
def test_no_upward_imports(module):
  up = sorted(m for m in _imports(module) if LEVEL.get(m, -1) > LEVEL[module])
  assert not up, f"{module} imports from above its layer: {up}"


@pytest.mark.parametrize("module", _modules())
def test_imports_are_the_tables(module):
  """Every import is in the module's row, and every row entry is still imported (the table
  is the real graph: `python tests/test_layers.py` prints it)."""
  got, allowed = _imports(module), _allowed(module)
  assert got <= allowed, f"{module} imports {sorted(got - allowed)}, not in ALLOWED"
  assert allowed <= got, f"{module} no longer imports {sorted(allowed - got)}: drop them"


def test_data_does_not_import_the_model():
  """The story reads upward: data/ stands below model/ (Inputs and the tiny vocabulary
  live below both; the encoder cache lives in model/)."""
  offending = {m: sorted(d for d in _imports(m) if d.startswith("model."))
               for m in _modules() if m.startswith("data.")}
  assert not {m: d for m, d in offending.items() if d}


def _imported_by(module: str, watched: tuple[str, ...]) -> list[str]:
  import subprocess
  code = (f"import sys, {module}; "
          f"print(sorted(m for m in sys.modules if m in {watched!r}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return eval(out.stdout)  # A printed list of module names.


def test_loading_a_model_does_not_import_the_trainer():
  watched = ("optax", "palijudge.train", "palijudge.losses", "palijudge.experiments.records")
  assert _imported_by("palijudge.loader", watched) == []


def test_the_probe_builds_its_encoder_cache_without_the_trainer():
  assert _imported_by("palijudge.evaluation.probe", ("optax", "palijudge.train")) == []


def architecture_block(width: int = 99, left: int = 27) -> str:
  """LAYERS as the docs' Architecture block: labels left, what they do right, bottom last."""
  out = []
  for label, _, text in LAYERS:
    names = textwrap.wrap(label, left - 2, break_on_hyphens=False)
    words = textwrap.wrap(text, width - left, break_on_hyphens=False)
    for i in range(max(len(names), len(words))):
      row = f"{names[i] if i < len(names) else '':<{left}}{words[i] if i < len(words) else ''}"
      out.append(row.rstrip())
  return "\n".join(out)


def _allowed_table() -> str:
  rows = []
  for m in _modules():
    deps = " ".join(sorted(_imports(m)))
    head = f'    "{m}": '
    if len(head) + len(deps) + 3 <= 100:
      rows.append(f'{head}"{deps}",')
      continue
    parts, cur = [], ""
    for w in deps.split():
      if cur and len(head) + len(cur) + len(w) + 5 > 100:
        parts.append(cur + " ")
        cur = w
      else:
        cur = f"{cur} {w}".strip()
    parts.append(cur)
    pad = " " * (len(head) + 1)
    rows.append(f'{head}("{parts[0]}"' + "".join(f'\n{pad}"{p}"' for p in parts[1:]) + "),")
  return "\n".join(rows)


def _doc_block() -> str:
  """The fenced block under the Architecture heading: docs/architecture.md, else README.md."""
  page = ROOT / "docs" / "architecture.md"
  text = page.read_text() if page.exists() else (ROOT / "README.md").read_text()
  after = text.split("## Architecture", 1)[-1] if not page.exists() else text
  return after.split("```\n", 2)[1].rstrip("\n")


def test_architecture_doc_is_the_table():
  assert _doc_block() == architecture_block()


def longest_chain() -> list[str]:
  """The longest import chain among the package's modules (the layering's depth)."""
  graph = {m: _imports(m) & set(LEVEL) for m in _modules()}
  memo: dict[str, list[str]] = {}

  def down(m: str) -> list[str]:  # Imports go strictly down or sideways in a layer: no cycles.
    if m not in memo:
      memo[m] = [m] + max((down(d) for d in sorted(graph[m])), key=len, default=[])
    return memo[m]
  return max((down(m) for m in sorted(graph)), key=len)


if __name__ == "__main__":
  if sys.argv[1:] == ["--chain"]:
    chain = longest_chain()
    print(f"{len(chain) - 1} hops: {' -> '.join(chain)}")
  else:
    print(architecture_block())
    print()
    print(_allowed_table())
