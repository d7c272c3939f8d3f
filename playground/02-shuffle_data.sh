#!/usr/bin/env bash
# The original interface: ./02-shuffle_data.sh -v 10 -n set1 (extra flags pass through).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec python3 "$here/02-shuffle_data.py" "$@"
