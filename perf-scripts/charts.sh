#!/usr/bin/env bash
# Installs matplotlib into a venv (target/charts-venv) and draws PNG charts
# from peercache-bench JSON results (all under peercache-bench-results/, or
# the files given).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${PEERCACHE_CHARTS_VENV:-$ROOT/target/charts-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import matplotlib" 2>/dev/null || "$VENV/bin/pip" install -q matplotlib
"$VENV/bin/python" "$ROOT/perf-scripts/charts.py" "$@"
