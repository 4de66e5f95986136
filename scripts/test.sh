#!/usr/bin/env bash
# The test command (README and CI): the whole suite against the locked environment.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MLFLOW_ALLOW_FILE_STORE=false PYTHONDONTWRITEBYTECODE=
.venv/bin/python -m pytest -q "$@"
