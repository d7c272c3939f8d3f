"""Lets a numbered script run as `./playground/NN-name.py` without activating anything.

Imported first by every script: when `palijudge` is not importable (no
virtual environment active), the script is re-run with the project's own
`.venv/bin/python`, which `make setup` creates. This module only looks at
the interpreter; it reads no environment variable.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")

try:
  import palijudge  # noqa: F401
except ImportError:
  python = os.path.join(VENV, "bin", "python")
  if os.path.exists(python) and os.path.realpath(sys.prefix) != os.path.realpath(VENV):
    os.execv(python, [python, *sys.argv])
  sys.exit(f"error: palijudge is not installed; run `make setup` in {ROOT} first")
