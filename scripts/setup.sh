#!/usr/bin/env bash
# Set up everything the project needs, idempotently (a second run takes seconds):
#   .venv        the engine / worker Python: torch, diffusers, the engine itself (editable), pytest
#   .venv-bpy42  Blender 4.2 LTS as a Python module (bpy wheel), no torch: the add-on's side
#   .venv-bpy45  Blender 4.5 LTS likewise
# torch: `pip install torch==2.13.0` takes the CPU build where one lies in pip's find-links
# (as on CI); on a CUDA machine install your own torch build into .venv first and this
# script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON311:-python3.11}
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo ".venv: installing torch==2.13.0"
    quiet_pip .venv/bin/python -m pip install --quiet torch==2.13.0
fi
if ! .venv/bin/python -c "import blender_sds.engine, diffusers, peft, skimage, trimesh, fast_simplification, igl, cryptography, ray, pytest, xdist, platform, importlib.util as u
assert platform.machine() != 'x86_64' or u.find_spec('triton')" 2>/dev/null; then
    echo ".venv: installing the engine and its dependencies (pinned in vendor/requirements-worker.txt)"
    grep -v '^torch==' vendor/requirements-worker.txt > .venv/constraints.txt
    quiet_pip .venv/bin/python -m pip install --quiet -c .venv/constraints.txt -e ".[test,batch]"
fi
bash scripts/bpy_envs.sh
