"""Fixtures for the add-on tests: the built zip, a tiny SD model, and a way to run a driver
scenario inside a Blender-side Python (a venv with only the bpy wheel; scripts/bpy_envs.sh).

The pytest process itself never imports bpy: each scenario runs in a fresh interpreter
(bpy can be imported once per process, and each Blender version needs its own wheel).
A missing Blender-side venv or validator skips locally and fails under CI (`CI=true`).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpy_harness import BPY_ENVS, DRIVER, HUB_MODEL, REPO, TINY_OVERRIDES, WORKER_PYTHON  # noqa: F401
from ci_skips import missing


def bpy_python(version: str) -> str:
    """The Blender-side interpreter for one version, or a skip (a failure under CI) saying how to create it."""
    python = BPY_ENVS[version] / "bin" / "python"
    if not python.exists():
        missing(f"{BPY_ENVS[version].name} (bpy {version}) is missing: run scripts/bpy_envs.sh to create it")
    return str(python)


@pytest.fixture(params=sorted(BPY_ENVS), ids=lambda v: f"blender{v}")
def blender(request):
    """Each supported Blender version in turn: for scenarios whose bpy calls differ between versions."""
    return bpy_python(request.param)


@pytest.fixture
def newest_blender():
    """The newest supported Blender only: for scenarios whose code under test uses no version-specific bpy API."""
    return bpy_python(max(BPY_ENVS, key=lambda v: tuple(map(int, v.split(".")))))


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(REPO / "build_addon.py"), "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0 and "blender_ext.py) was not found" in proc.stderr:
        missing("Blender's extension validator (blender_ext.py) is missing: run scripts/bpy_envs.sh")
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_folder):
    return str(tiny_sd_folder)


@pytest.fixture(scope="session")
def pycache(tmp_path_factory) -> Path:
    """One bytecode cache for every Blender process, worker and engine CLI the add-on tests start.

    The add-on points its worker's PYTHONPYCACHEPREFIX at its own cache folder, fresh in each
    test's user folder: every worker would compile torch, diffusers and transformers from
    source again (with PYTHONDONTWRITEBYTECODE set, every single launch; ~15 s each here).
    Sharing the folder across the session makes that a one-time cost, as it is for a user;
    nothing is written inside the add-on folder either way."""
    return tmp_path_factory.mktemp("pycache")


# The add-on's cache folder (paths.cache_dir: bpy.utils.extension_path_user(..., "cache")) under
# BLENDER_USER_RESOURCES, and in it the worker's PYTHONPYCACHEPREFIX (runner.worker_environment).
ADDON_PYCACHE = Path("extensions", ".user", "user_default", "blender_sds", "cache", "pycache")


@pytest.fixture
def run_scenario(tmp_path, addon_zip, pycache):
    """run_scenario(python, name, **args) -> the facts the driver printed. With a `port` (a remote
    scenario), `fingerprint` is the certificate fingerprint that the `serve` on that port printed."""
    def run(python, scenario, timeout=600, **args):
        user = tmp_path / "blender-user"
        work = tmp_path / "work"
        user.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        link = user / ADDON_PYCACHE
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(pycache, target_is_directory=True)
        if "port" in args and "fingerprint" not in args:  # a remote scenario: the certificate serve printed
            from serve_client import FINGERPRINTS
            args["fingerprint"] = FINGERPRINTS.get(args["port"], "")
        payload = {"scenario": scenario, "zip": str(addon_zip), "tmp": str(work), "repo": str(REPO),
                   "worker_python": WORKER_PYTHON, "overrides": TINY_OVERRIDES, "pycache": str(pycache), **args}
        temp = tmp_path / "tmp"  # Blender's session folder: not every bpy exit removes it
        temp.mkdir(exist_ok=True)
        env = dict(os.environ, BLENDER_USER_RESOURCES=str(user), PYTHONPYCACHEPREFIX=str(pycache), TMPDIR=str(temp))
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode goes to the shared prefix, never beside the sources
        proc = subprocess.run([python, str(DRIVER), json.dumps(payload)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=str(work))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SDS_RESULT ")]
        assert lines, f"driver printed no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        result = json.loads(lines[-1][len("SDS_RESULT "):])
        assert "driver_error" not in result, result["driver_error"]
        result["_user_dir"] = str(user)
        return result
    return run


@pytest.fixture
def server(tmp_path):
    """A real `serve` (TLS, as it starts by default) on a free loopback port, in its own folder:
    (folder, port). run_scenario passes the fingerprint it printed to the scenario as `fingerprint`,
    which the scenario pins in the preferences, as an artist pastes it."""
    from serve_client import start_serve, stop_serve
    serve_tmp = tmp_path / "server"
    serve_tmp.mkdir()
    proc, port = start_serve(serve_tmp)
    yield serve_tmp, port
    stop_serve(proc)
