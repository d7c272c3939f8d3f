"""The package's layering: no module under src/palijudge imports a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "palijudge"
# Bottom to top, as docs/architecture.md lists them.
LAYERS = [
    {"errors", "files", "options", "metrics", "progress", "stats"},
    {"params"},
    {"quantize"},
    {"distributed", "devices"},
    {"model.config", "model.vit", "model.lora", "model.gemma", "model.paligemma"},
    {"checkpoint"},
    {"hf", "hf_export"},
    {"data.examples", "data.splits", "data.images", "data.tokenizer", "data.batch",
     "data.features", "data.synthetic", "data.audit", "data.likeness", "data.templated",
     "data.decisions", "data.audit_report", "data.audit_bench"},
    {"loader"},
    {"losses", "train"},
    {"thresholds", "gallery", "evaluate", "predictions", "infer", "probe", "ensemble"},
    {"compare"},
    {"learn"},
    {"experiments.records", "experiments.plots", "experiments.cv", "experiments.tune",
     "experiments.leaderboard"},
    {"tools.bench", "tools.gpubench", "tools.fullsize", "tools.planner", "tools.download",
     "tools.demo", "tools.quantbench"},
    {"cli"},
]
LEVEL = {m: i for i, layer in enumerate(LAYERS) for m in layer}


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
  return {m for m in out if m}


def test_every_module_has_a_layer():
  assert set(_modules()) == set(LEVEL), set(_modules()) ^ set(LEVEL)


@pytest.mark.parametrize("module", _modules())
def test_no_upward_imports(module):
  up = sorted(m for m in _imports(module) if LEVEL.get(m, -1) > LEVEL[module])
  assert not up, f"{module} imports from above its layer: {up}"


def test_loading_a_model_does_not_import_the_trainer():
  import subprocess
  import sys
  code = ("import sys, palijudge.loader; "
          "print(sorted(m for m in sys.modules if m in ('optax', 'palijudge.train', "
          "'palijudge.losses', 'palijudge.experiments.records')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout
