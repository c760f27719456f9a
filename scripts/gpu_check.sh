#!/usr/bin/env bash
# Every GPU figure in one prepared run (docs/PERFORMANCE.md "The GPU check"):
#   bash scripts/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS]
# On the lent GPU machine (Python 3.12 with torch, no diffusers, no network) it installs the
# wheels carried in .gpu-wheels/ (made here by scripts/gpu_wheels.sh) into a scratch folder,
# then runs scripts/gpu_check.py from this checkout, uninstalled. Figures land in $OUT
# (or --out): gpu_check.json, gpu_check.log, nvidia-smi.txt, asset_preview.png.
# --dry-run runs the same stages on the CPU with a tiny model (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import diffusers" 2>/dev/null; then
    if ! ls .gpu-wheels/*.whl >/dev/null 2>&1; then
        echo "gpu_check: diffusers is missing and .gpu-wheels/ holds no wheels (run scripts/gpu_wheels.sh here)" >&2
        exit 2
    fi
    SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu-wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${BLENDER_SDS_COMMIT:-}" ] && git rev-parse --short HEAD >/dev/null 2>&1; then
    BLENDER_SDS_COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo "-dirty")
fi
export BLENDER_SDS_COMMIT=${BLENDER_SDS_COMMIT:-unknown}
exec "$PY" scripts/gpu_check.py "$@"
