#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and start the main job: the realtime server
# with the demo shop-kiosk knowledge pack. Extra arguments go to `mmagent serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Idle OpenMP threads sleep instead of spinning: several times faster on a busy 2-core CPU.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/mmagent serve --pack packs/demo_kiosk "$@"
