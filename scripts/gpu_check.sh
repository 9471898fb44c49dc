#!/usr/bin/env bash
# Everything that needs a GPU, in one command (see scripts/gpu_check.py): writes one JSON, default gpu_check.json.
#   bash scripts/gpu_check.sh                  # on one GPU: the released shape, under 8 minutes on an H200
#   bash scripts/gpu_check.sh --cpu-smoke      # tiny sizes on the CPU: the path, not the numbers (CI runs it)
# It uses the python in $PYTHON (default python3); where higgs_train is not importable it installs this checkout
# without dependencies (the device machines reach no package index), so torch, transformers and peft must be there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c "import higgs_train" 2>/dev/null || "$PY" -m pip install -q --no-deps -e .
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$@"
