#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and run the whole test suite:
# linter (ruff), type checker (mypy), then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Idle OpenMP threads sleep instead of spinning: several times faster on a busy 2-core CPU.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
echo "== ruff"; .venv/bin/ruff check perception voice fusion agent server bench tests examples
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest "$@"
