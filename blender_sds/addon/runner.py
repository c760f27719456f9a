"""Start a generation, follow it on the main thread, and bring its result into the scene.

Two ways to follow a generation, one code path: `execute()` blocks in `Generation.wait()`
(scripts, background Blender, where timers never fire); `invoke()` registers `_tick` with
bpy.app.timers, which pumps the same Generation a few times a second while Blender stays
responsive. Only one run at a time; it is killed on unregister and when another file is
loaded (`stop_all`). The worker is a local subprocess or, in REMOTE mode, a connection to
`serve` on another machine (`make_client`); everything after that is the same.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import time

import bpy

from ..results import WORKER_LOG
from . import importer, job_builder, paths, preferences
from .console_progress import ConsoleProgress
from .errors import ArtistError
from .remote_client import RemoteClient
from .session import Generation
from .worker_client import WorkerClient, WorkerStartError
from .wrap import wrap

PREVIEW_IMAGE = "SDS Preview"
TICK_SECONDS = 0.2

_active: Generation | None = None


def active() -> Generation | None:
    return _active if _active is not None and not _active.finished else None


def worker_environment(prefs) -> dict:
    """The worker's environment: our package on its path, caches in our folder, no Blender leftovers."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")}
    cache = paths.cache_dir(prefs)
    env["PYTHONPATH"] = paths.worker_pythonpath()
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPYCACHEPREFIX"] = os.path.join(cache, "pycache")  # never write into the add-on folder
    if prefs.cache_folder or "HF_HOME" not in env:
        env["HF_HOME"] = os.path.join(cache, "huggingface")
    if not bpy.app.online_access:
        env["HF_HUB_OFFLINE"] = "1"  # Blender's online access is off: the worker must not download
    return env


def new_result_dir(prefs, label: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")[:32].lower() or "run"
    base = os.path.join(paths.runs_dir(prefs), time.strftime("%Y%m%d-%H%M%S-") + slug)
    folder, n = base, 1
    while os.path.exists(folder):
        n += 1
        folder = f"{base}-{n}"
    os.makedirs(folder)
    return folder


def _check_idle() -> None:
    if active() is not None:
        raise ArtistError("A run is already going: wait for it to finish or press Cancel")


@contextlib.contextmanager
def run_folder(context, label: str):
    """A new result folder made before the job (which may put its start mesh there), removed
    again if the run does not start."""
    _check_idle()
    folder = new_result_dir(preferences.get(context), label)
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def start(context, job: dict, base_dir: str, *, name: str, matrix_world=None, out_dir: str | None = None) -> Generation:
    """Start a worker on `job`; the result will become an object called `name`, in `out_dir`
    (run_folder) or a folder made here."""
    global _active
    _check_idle()
    prefs = preferences.get(context)
    remote = prefs.worker_mode == "REMOTE"
    make = _remote_client(prefs) if remote else _local_client(prefs)
    out_dir = out_dir or new_result_dir(prefs, job.get("prompt", "") or name)
    client = make(out_dir)
    meta = {"scene": context.scene.name, "view_layer": context.view_layer.name, "name": name,
            "matrix_world": [list(row) for row in matrix_world] if matrix_world is not None else None,
            "offline": not remote and not bpy.app.online_access and _is_hub_model(job)}
    generation = Generation(client, job, base_dir, out_dir, preferences.device_name(prefs), meta,
              silence_seconds=float(prefs.worker_timeout))
    try:
        generation.start()
    except WorkerStartError as exc:
        where = "Address, Token and Fingerprint" if remote else "Worker Python"
        raise ArtistError(f"The worker could not be started ({exc}): check {where} in "
                          + preferences.PREFS_PATH) from None
    _active = generation
    s = context.scene.sds
    s.status, s.last_error, s.progress, s.step, s.steps_total, s.seconds_left = "Starting worker", "", 0.0, 0, 0, -1.0
    return generation


def _local_client(prefs):
    """A factory for a worker subprocess (checked now, before a run folder is made)."""
    python = preferences.worker_python(prefs)
    if os.path.basename(paths.PACKAGE_DIR) != paths.PACKAGE_NAME:
        raise ArtistError(f"The add-on folder is named '{os.path.basename(paths.PACKAGE_DIR)}', the worker needs "
                          f"'{paths.PACKAGE_NAME}': reinstall the add-on from its zip")
    env = worker_environment(prefs)
    return lambda out_dir: WorkerClient([python, "-u", "-m", f"{paths.PACKAGE_NAME}.engine", "worker"], env,
                                        out_dir, os.path.join(out_dir, WORKER_LOG))


def _remote_client(prefs):
    """A factory for a connection to a remote `serve`: over TLS, its certificate pinned to
    Fingerprint (like an SSH host key), unless TLS is off (plain TCP, loopback only)."""
    host, port = preferences.remote_address(prefs)
    token = prefs.remote_token.strip()
    fingerprint, tls = prefs.remote_fingerprint.strip(), prefs.remote_tls
    return lambda out_dir: RemoteClient(host, port, token, out_dir, os.path.join(out_dir, WORKER_LOG),
                                        fingerprint=fingerprint, tls=tls)


def _is_hub_model(job: dict) -> bool:
    model = job.get("guidance", {}).get("model")
    return isinstance(model, str) and not os.path.exists(model)


def sync_scene(generation: Generation, scene) -> None:
    """Copy the run's state into scene.sds (main thread only), and show a new preview."""
    s = scene.sds
    s.status = {"failed": "Failed", "cancelled": generation.message}.get(generation.state, generation.stage_text)
    s.step, s.steps_total = generation.step, generation.steps
    s.progress = min(1.0, generation.fraction)
    s.seconds_left = -1.0 if generation.seconds_left is None else float(generation.seconds_left)
    if generation.preview_path and generation.preview_serial != generation.shown_preview:
        generation.shown_preview = generation.preview_serial
        show_preview(scene, generation.preview_path)


def show_preview(scene, path: str) -> None:
    if not os.path.isfile(path):
        return
    img = bpy.data.images.get(PREVIEW_IMAGE)
    if img is None:
        img = bpy.data.images.load(path)
        img.name = PREVIEW_IMAGE
    elif bpy.path.abspath(img.filepath) != path:
        img.filepath = path
    img.reload()
    if img.preview is not None:
        img.preview.reload()
    scene.sds.preview_image = img


def finish(generation: Generation, scene, view_layer):
    """The imported object of a finished generation, or ArtistError with the run's message."""
    global _active
    if _active is generation:
        _active = None
    sync_scene(generation, scene)
    if generation.state != "done":
        message = generation.message
        if generation.meta.get("offline") and generation.code == "model":
            message += (" (Blender's online access is off, so the worker cannot download models: allow it in "
                        "Preferences > System > Network, or set Model to a local folder)")
        elif job_builder.prompt_not_drawable(generation.job, generation.key):
            message += (". Change Prompt in the SDS panel, or set Model Source to Stable Diffusion in "
                        + preferences.PREFS_PATH)
        scene.sds.last_error = message
        raise ArtistError(message)
    matrix = generation.meta.get("matrix_world")
    try:
        ob = importer.import_result(scene, view_layer, generation.result_dir,
                                    name=generation.meta.get("name"), matrix_world=matrix)
    except ArtistError as exc:
        scene.sds.last_error = str(exc)
        scene.sds.status = "Failed"
        raise
    except Exception as exc:  # a result damaged after the run (truncated, half deleted): say so, change nothing
        message = (f"The result in {generation.result_dir} could not be imported ({type(exc).__name__}: {exc}): "
                   "it was damaged or removed after the run; run the job again")
        scene.sds.last_error, scene.sds.status = message, "Failed"
        raise ArtistError(message) from None
    scene.sds.status = f"Done: {ob.name}"
    return ob


def wait_and_import(context, generation: Generation):
    """execute(): wait for the run here, then import. Returns the new object.

    No panel is drawn meanwhile, so progress also goes to stdout (console_progress.py).
    """
    scene = context.scene
    console = ConsoleProgress(generation.meta.get("name") or "run")

    def changed(r):
        sync_scene(r, scene)
        console(r)
    try:
        generation.wait(on_change=changed)
    except BaseException:
        generation.kill("Interrupted")
        stop_all("Interrupted")
        raise
    return finish(generation, scene, context.view_layer)


# -- asynchronous: a timer on the main thread ------------------------------------------------

def follow(generation: Generation) -> None:
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=TICK_SECONDS)


def _tick():
    generation = _active
    if generation is None:
        return None
    generation.pump()
    scene = bpy.data.scenes.get(generation.meta["scene"])
    if scene is None:
        generation.kill("The scene was removed")
        stop_all("")
        return None
    sync_scene(generation, scene)
    _redraw()
    if not generation.finished:
        return TICK_SECONDS
    view_layer = scene.view_layers.get(generation.meta["view_layer"]) or scene.view_layers[0]
    try:
        ob = finish(generation, scene, view_layer)
    except ArtistError as exc:
        if generation.state != "cancelled":
            _popup(str(exc))
        return None
    try:
        bpy.ops.ed.undo_push(message=f"SDS: add {ob.name}")
    except RuntimeError:
        pass  # no undo stack (background)
    return None


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def _popup(message: str) -> None:
    print(f"SDS: {message}")
    wm = bpy.context.window_manager
    if bpy.app.background or not getattr(wm, "windows", None):
        return  # no window to show it in (popup_menu crashes background Blender); the panel has last_error

    def draw(menu, _context):
        for line in wrap(message, 90):
            menu.layout.label(text=line)
    try:
        bpy.context.window_manager.popup_menu(draw, title="SDS", icon="ERROR")
    except (RuntimeError, AttributeError):
        pass


def cancel() -> bool:
    generation = active()
    if generation is None:
        return False
    generation.cancel()
    return True


def stop_all(reason: str = "Stopped") -> None:
    """Kill the worker now and forget the run (unregister, another file loaded)."""
    global _active
    generation, _active = _active, None
    if generation is not None:
        generation.kill(reason)
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
