"""The managed worker environment: a venv in the user folder with the pinned worker packages.

Blender's Python never gets torch. Instead, on the artist's request ("Set Up Worker
Environment" in the preferences), we make a separate venv under the extension's user
folder with Blender's own interpreter and pip-install `vendor/requirements-worker.txt`
into it (from `vendor/worker-wheels/` without network when the bundle carries wheels).
The work runs in a subprocess on a thread; only the main thread reads its state.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import bpy

from . import paths
from .errors import ArtistError


def env_dir() -> str:
    return paths.user_dir("worker-env")


def env_python(folder: str | None = None) -> str:
    folder = folder or env_dir()
    if os.name == "nt":
        return os.path.join(folder, "Scripts", "python.exe")
    return os.path.join(folder, "bin", "python")


def requirements_file() -> str:
    return os.path.join(paths.vendor_dir(), "requirements-worker.txt")


def offline_wheels() -> str | None:
    folder = os.path.join(paths.vendor_dir(), "worker-wheels")
    if os.path.isdir(folder) and any(name.endswith(".whl") for name in os.listdir(folder)):
        return folder
    return None


def setup_commands(folder: str, requirements: str, wheels: str | None) -> list[list[str]]:
    pip = [env_python(folder), "-m", "pip", "install", "--disable-pip-version-check", "-r", requirements]
    if wheels:
        pip += ["--no-index", "--find-links", wheels]
    return [[sys.executable, "-m", "venv", folder], pip]


class EnvSetup:
    """Runs the setup commands one after another; `state` is read by the main thread."""

    def __init__(self, commands: list[list[str]], log_path: str):
        self.commands = commands
        self.log_path = log_path
        self.state = "running"  # running | done | failed
        self.message = "Setting up the worker environment..."
        self.thread = threading.Thread(target=self._work, name="sds-env-setup", daemon=True)

    def start(self) -> "EnvSetup":
        self.thread.start()
        return self

    def wait(self) -> None:
        self.thread.join()

    def _work(self) -> None:
        with open(self.log_path, "wb") as log:
            for i, cmd in enumerate(self.commands, 1):
                self.message = f"Step {i} of {len(self.commands)}: {os.path.basename(cmd[0])} {' '.join(cmd[1:3])}"
                try:
                    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
                except OSError as exc:
                    self.state, self.message = "failed", f"Could not run {cmd[0]}: {exc.strerror or exc}"
                    return
                if code != 0:
                    self.state = "failed"
                    self.message = f"'{' '.join(cmd[:4])} ...' failed with exit code {code}: see {self.log_path}"
                    return
        self.state, self.message = "done", "Worker environment ready"


_current: EnvSetup | None = None


def current() -> EnvSetup | None:
    return _current


def begin_setup() -> EnvSetup:
    """Start setting up the environment, or ArtistError saying why it cannot be done now."""
    global _current
    if _current is not None and _current.state == "running":
        raise ArtistError("The worker environment is already being set up: wait for it to finish")
    requirements = requirements_file()
    if not os.path.isfile(requirements):
        raise ArtistError(f"The pinned worker requirements are missing ({requirements}): reinstall the add-on")
    wheels = offline_wheels()
    if wheels is None and not bpy.app.online_access:
        raise ArtistError("Setting up the worker environment downloads torch and diffusers (several GB), but "
                          "Blender's online access is off: allow it in Preferences > System > Network, or set "
                          "Worker Python to an existing Python that has them")
    folder = env_dir()
    _current = EnvSetup(setup_commands(folder, requirements, wheels),
                        os.path.join(paths.user_dir("logs"), "worker-env-setup.log")).start()
    return _current
