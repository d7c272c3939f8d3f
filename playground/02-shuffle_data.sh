#!/usr/bin/env bash
# The original interface: ./02-shuffle_data.sh -v 10 -n set1 (extra flags pass through).
# Runs with the project's .venv (made by `make setup`), activated or not.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="$here/../.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
exec "$py" "$here/02-shuffle_data.py" "$@"
