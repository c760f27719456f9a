#!/usr/bin/env bash
# The main job, offline: set up, generate an asset with the engine, bring it into Blender
# headless, and save out/demo.blend and out/demo.png (the object from two sides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
echo "== generating (engine, $(nproc) CPU cores; progress as JSON lines in out/result/log.jsonl)"
.venv/bin/python -m blender_sds.engine run examples/box/job.json --out out/result --progress bar
echo "== building the extension and importing the result into Blender"
zip=$(.venv/bin/python build_addon.py --out out/dist | tail -n 1)
.venv-bpy45/bin/python scripts/demo_blend.py "$zip" out/result out/demo.blend out/demo.png
