"""Fixtures for the add-on tests: the built zip, a tiny SD model, and a way to run a driver
scenario inside a Blender-side Python (a venv with only the bpy wheel; scripts/bpy_envs.sh).

The pytest process itself never imports bpy: each scenario runs in a fresh interpreter
(bpy can be imported once per process, and each Blender version needs its own wheel).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpy_harness import BPY_ENVS, DRIVER, HUB_MODEL, REPO, TINY_OVERRIDES, WORKER_PYTHON  # noqa: F401



@pytest.fixture(params=sorted(BPY_ENVS), ids=lambda v: f"blender{v}")
def blender(request):
    """The Blender-side interpreter for one version, or a skip saying how to create it."""
    python = BPY_ENVS[request.param] / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{BPY_ENVS[request.param].name} is missing: run scripts/bpy_envs.sh to create it")
    return str(python)


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(REPO / "build_addon.py"), "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0 and "blender_ext.py) was not found" in proc.stderr:
        pytest.skip("Blender's extension validator is missing: run scripts/bpy_envs.sh")
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from blender_sds.engine.bench.tiny_models import make_tiny_sd
    return str(make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd"))


@pytest.fixture
def run_scenario(tmp_path, addon_zip):
    """run_scenario(python, name, **args) -> the facts the driver printed."""
    def run(python, scenario, timeout=600, **args):
        user = tmp_path / "blender-user"
        work = tmp_path / "work"
        user.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        payload = {"scenario": scenario, "zip": str(addon_zip), "tmp": str(work), "repo": str(REPO),
                   "worker_python": WORKER_PYTHON, "overrides": TINY_OVERRIDES, **args}
        env = dict(os.environ, BLENDER_USER_RESOURCES=str(user))
        env.pop("PYTHONPATH", None)
        proc = subprocess.run([python, str(DRIVER), json.dumps(payload)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=str(work))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SDS_RESULT ")]
        assert lines, f"driver printed no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        result = json.loads(lines[-1][len("SDS_RESULT "):])
        assert "driver_error" not in result, result["driver_error"]
        result["_user_dir"] = str(user)
        return result
    return run
