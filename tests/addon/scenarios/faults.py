"""Faults the add-on survives: a killed, frozen or foreign worker, late cancels, a damaged result (tests/addon/test_addon_faults.py)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import bpy

from .common import addon_module, call, changes, setup_run, snapshot, two_camera_scene


class Watcher:
    """Catches the run the add-on starts next, and does something to its worker once
    `when(run)` holds (SIGKILL, SIGSTOP). Runs on a thread: attribute reads only, no bpy."""

    def __init__(self, started: list, when=None, action=None):
        self.started, self.count = started, len(started)
        self.when, self.action = when, action
        self.did = False
        if action is not None:
            self.thread = threading.Thread(target=self._watch, daemon=True)
            self.thread.start()

    @property
    def run(self):
        return self.started[self.count] if len(self.started) > self.count else None

    def _watch(self):
        end = time.monotonic() + 180
        while time.monotonic() < end:
            run = self.run
            if run is not None and self.when(run) and run.client.proc is not None:
                self.action(run.client.proc.pid)
                self.did = True
                return
            time.sleep(0.02)


def record_runs(runner) -> list:
    """Every Run that runner.start() returns, in order (the operators call it by attribute)."""
    started = []
    original = runner.start

    def start(*args, **kwargs):
        run = original(*args, **kwargs)
        started.append(run)
        return run
    runner.start = start
    return started


def fake_worker(folder, name, body):
    """A program that is not our worker, for Worker Python (stdlib only, so any Python runs it)."""
    path = os.path.join(folder, name)
    with open(path, "w") as fh:
        fh.write(f"#!{sys.executable}\nimport json, sys, time\n{body}\n")
    os.chmod(path, 0o755)
    return path


def run(args):
    prefs, _scene = setup_run(args)
    runner = addon_module("runner")
    job_builder = addon_module("job_builder")
    started = record_runs(runner)
    out = {}

    def fresh():
        scene = two_camera_scene()
        s = scene.sds
        s.prompt, s.seed, s.camera_source = "a red ball", 3, "SCENE"
        s.job_overrides = json.dumps(args["overrides"])
        prefs.worker_python = args["worker_python"]
        return scene

    def blocking(name, setup=None, when=None, action=None):
        """bpy.ops.sds.generate() (execute) with something done to its worker meanwhile."""
        scene = fresh()
        if setup is not None:
            setup()
        before = snapshot()
        watcher = Watcher(started, when, action)
        t = time.monotonic()
        ret, err = call(bpy.ops.sds.generate)
        run = watcher.run
        out[name] = {"returned": ret, "message": err, "seconds": time.monotonic() - t,
                     "scene_same": snapshot() == before, "status": scene.sds.status,
                     "last_error": scene.sds.last_error, "running": scene.sds.is_running, "did": watcher.did,
                     "worker_alive": run is not None and run.client.running,
                     "worker_code": run and run.client.proc and run.client.proc.poll(),
                     "state": run and run.state}

    def running(run):
        return run.state == "running"

    blocking("sigkill", when=running, action=lambda pid: os.kill(pid, signal.SIGKILL))
    prefs.worker_timeout = 5
    # Frozen as soon as it has said hello (it is then loading the engine for the run): nothing more comes.
    blocking("silent", when=lambda run: run.greeted, action=lambda pid: os.kill(pid, signal.SIGSTOP))
    prefs.worker_timeout = 120
    tmp = args["tmp"]
    blocking("not_python", lambda: setattr(prefs, "worker_python", "/bin/cat"))
    blocking("other_version", lambda: setattr(prefs, "worker_python", fake_worker(tmp, "v99.py", (
        'print(json.dumps({"type": "hello", "protocol": 99, "role": "worker"}), flush=True)\n'
        'sys.stdin.read()'))))
    blocking("garbage_first", lambda: setattr(prefs, "worker_python", fake_worker(tmp, "banner.py", (
        'print("Welcome to ExamplePython 3.11!", flush=True)\ntime.sleep(60)'))))
    blocking("garbage_mid", lambda: setattr(prefs, "worker_python", fake_worker(tmp, "garbage.py", (
        'print(json.dumps({"type": "hello", "protocol": 1, "role": "worker"}), flush=True)\n'
        'sys.stdin.readline(); sys.stdin.readline()\n'
        'sys.stdout.buffer.write(b"\\x00\\xff this is not a message\\n"); sys.stdout.flush()\n'
        'time.sleep(60)'))))

    # The asynchronous path (invoke): start, then drive the timer callback by hand.
    def start_async():
        scene = fresh()
        before = snapshot()
        run = runner.start(bpy.context, job_builder.generate_job(bpy.context, prefs), os.getcwd(), name="async")
        runner.follow(run)
        return scene, before, run

    def tick_until_finished(run, limit=120):
        end = time.monotonic() + limit
        while time.monotonic() < end and runner._tick() is not None:
            time.sleep(0.05)

    def settled(name, scene, before, run, **extra):
        try:
            run.client.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        out[name] = {"state": run.state, "message": run.message, "status": scene.sds.status,
                     "last_error": scene.sds.last_error, "changes": changes(before),
                     "worker_alive": run.client.running, "active": runner.active() is not None,
                     **extra}

    # Cancel at once, before the worker has even said hello.
    scene, before, run = start_async()
    greeted_at_cancel = run.greeted
    ret, _err = call(bpy.ops.sds.cancel)
    ret2, _err = call(bpy.ops.sds.cancel)  # a second press changes nothing
    tick_until_finished(run)
    settled("cancel_at_once", scene, before, run, greeted_at_cancel=greeted_at_cancel, returned=[ret, ret2])

    # Cancel after the last step: the run finishes anyway; its result is kept, not imported.
    scene, before, run = start_async()
    end = time.monotonic() + 120
    while time.monotonic() < end and not run.finished and run.stage not in ("writing result", "extracting mesh"):
        run.pump(0.1, max_messages=1)
    stage_at_cancel = run.stage
    ret, _err = call(bpy.ops.sds.cancel)
    tick_until_finished(run)
    settled("cancel_late", scene, before, run, stage_at_cancel=stage_at_cancel, returned=ret,
            result_kept=bool(run.result_dir) and os.path.isfile(os.path.join(run.result_dir, "mesh.npz")))

    # A result damaged between the run and the import: truncated, then gone.
    scene, before, run = start_async()
    end = time.monotonic() + 120
    while time.monotonic() < end and not run.pump(0.1):
        pass
    state_before_import = run.state
    mesh = os.path.join(run.result_dir, "mesh.npz")
    with open(mesh, "r+b") as fh:
        fh.truncate(os.path.getsize(mesh) // 2)
    runner._tick()  # the import step of the asynchronous path
    settled("truncated", scene, before, run, state_before_import=state_before_import)
    shutil.rmtree(run.result_dir)
    try:
        runner.finish(run, scene, bpy.context.view_layer)  # the import again, now on a vanished folder
        vanished = "imported?!"
    except Exception as exc:  # ArtistError
        vanished = f"{type(exc).__name__}: {exc}"
    out["vanished"] = {"error": vanished, "last_error": scene.sds.last_error, "changes": changes(before)}
    out["torch_loaded"] = "torch" in sys.modules
    return out
