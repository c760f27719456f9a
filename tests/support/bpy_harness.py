"""Paths and settings the add-on tests share (a uniquely named module, so test files can
import it whatever other conftest.py files exist)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "addon" / "driver.py"
WORKER_PYTHON = str(REPO / ".venv" / "bin" / "python")
BPY_ENVS = {"4.2": REPO / ".venv-bpy42", "4.5": REPO / ".venv-bpy45"}
# The smallest job that still runs every stage of the engine: a few CPU seconds per step.
TINY_OVERRIDES = {"preset": "draft", "steps": 2, "render": {"resolution": 32, "samples": 8},
                  "mesh": {"resolution": 24}, "optim": {"orientation": 0.0, "albedo_steps": 2},
                  "output": {"preview_every": 0}}
HUB_MODEL = "example-org/never-downloaded"  # valid job syntax; for scenarios whose worker never loads it
