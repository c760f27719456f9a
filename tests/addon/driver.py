"""Runs inside a Blender-side Python (a venv with only the bpy wheel): plays one add-on
scenario through the scripting API and prints the facts it saw as one line
`SDS_RESULT {...}` for the pytest side to judge.

    python driver.py '{"scenario": "e2e", "zip": ..., "worker_python": ..., ...}'

Each scenario is a module in tests/addon/scenarios/ (see scenarios/__init__.py for the
names) with `run(args) -> dict`; it installs the add-on zip the way a user does (helpers
in scenarios/common.py). BLENDER_USER_RESOURCES must point at a temp folder before bpy is
imported (the caller sets it), so nothing lands in the real user's Blender folders.
"""
import importlib
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bpy  # noqa: E402

from scenarios import SCENARIOS  # noqa: E402
from scenarios.common import ADDON  # noqa: E402


def play(args: dict) -> dict:
    name = args["scenario"]
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; scenarios: {', '.join(sorted(SCENARIOS))}")
    return importlib.import_module(f"scenarios.{SCENARIOS[name]}").run(args)


def main():
    args = json.loads(sys.argv[1])
    try:
        result = play(args)
    except Exception:
        result = {"driver_error": traceback.format_exc()}
    result["blender"] = bpy.app.version_string
    print("SDS_RESULT " + json.dumps(result), flush=True)
    if ADDON in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_disable(module=ADDON)  # 4.5 can hang at exit with classes registered


if __name__ == "__main__":
    main()
