#!/usr/bin/env bash
# The test command (README and CI): lint and format checks, then the whole suite against the locked environment.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MLFLOW_ALLOW_FILE_STORE=false PYTHONDONTWRITEBYTECODE=
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
