"""Plain helpers for engine runs on the tiny Stable-Diffusion-shaped model (tests/engine/train):
the small job every run uses and the engine's CLI as a subprocess."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SMALL = {"preset": "draft", "steps": 6, "render": {"resolution": 32, "samples": 24},
         "mesh": {"resolution": 32}, "output": {"preview_every": 3, "checkpoint_every": 3, "progress_every": 2}}


def sd_job(model, **extra) -> dict:
    raw = {"version": 1, "prompt": "a ceramic teapot", "seed": 7,
           "bounds": {"center": [0.0, 0.0, 1.0], "size": 2.0},
           "guidance": {"kind": "stable-diffusion", "model": str(model)}, **SMALL}
    raw.update(extra)
    return raw


def engine(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blender_sds.engine", *args], capture_output=True, text=True,
                          cwd=cwd, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                        "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                        **(env or {})},
                          timeout=600)
