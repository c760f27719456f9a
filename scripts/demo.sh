#!/usr/bin/env bash
# The main job, offline: set up, then in headless Blender install the extension, choose the
# pocket world (offline demo model), generate "a red cube" through the add-on and its engine
# worker (.venv), and save out/demo.blend and out/demo.png (the object from two sides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
echo "== building the extension"
zip=$(.venv/bin/python build_addon.py --out out/dist | tail -n 1)
echo "== Blender (headless): generating with the add-on, engine worker on $(nproc) CPU cores"
# Cycles' per-tile log lines ("Fra:...") are dropped; the add-on's progress lines stay.
.venv-bpy45/bin/python scripts/demo_blend.py "$zip" .venv/bin/python out/demo.blend out/demo.png "$@" \
    | grep --line-buffered -v '^Fra:'
