"""The asynchronous path, Cancel, and the worker stopped on file load and on disable (tests/addon/test_addon_lifecycle.py)."""
import json
import os
import subprocess
import sys
import time

import bpy

from .common import ADDON, addon_module, call, setup_run, snapshot


def run(args):
    """The asynchronous path (timer callback driven by hand: timers never fire in bpy), cancel,
    and the worker being stopped when another file loads and when the add-on is disabled."""
    prefs, scene = setup_run(args)
    runner = addon_module("runner")
    job_builder = addon_module("job_builder")
    out = {}

    def start():
        job = job_builder.generate_job(bpy.context, prefs)
        run = runner.start(bpy.context, job, os.getcwd(), name="async")
        runner.follow(run)
        return run

    def tick_until(pred, limit):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            again = runner._tick()
            if pred():
                return True
            if again is None:
                return pred()
            time.sleep(0.1)
        return False

    # 1. invoke-style run, cancelled once the engine is stepping.
    before = snapshot()
    run = start()
    out["timer_registered"] = bpy.app.timers.is_registered(runner._tick)
    out["reached_engine"] = tick_until(lambda: run.greeted and run.stage not in ("starting worker",), 120)
    out["stage_seen"] = run.stage
    out["running_flag"] = scene.sds.is_running
    ret, err = call(bpy.ops.sds.cancel)
    out["cancel_returned"] = ret
    tick_until(lambda: run.finished, 60)
    try:
        run.client.proc.wait(15)  # the worker is stopped off the main thread; give it a moment
    except subprocess.TimeoutExpired:
        pass
    out["cancel"] = {"state": run.state, "message": run.message, "status": scene.sds.status,
                     "worker_alive": run.client.running, "scene_same": snapshot() == before,
                     "running_after": scene.sds.is_running, "active": runner.active() is not None}

    # 2. another file loaded while a run goes: load_pre stops the worker.
    run = start()
    tick_until(lambda: run.greeted, 60)
    bpy.ops.wm.read_homefile(use_empty=True)
    run.client.proc.wait(10)
    out["load_pre"] = {"worker_alive": run.client.running, "state": run.state, "active": runner.active() is not None,
                       "timer": bpy.app.timers.is_registered(runner._tick)}

    # 3. the add-on disabled while a run goes: unregister stops the worker.
    scene = bpy.context.scene
    scene.sds.prompt = "a red ball"
    scene.sds.job_overrides = json.dumps(args["overrides"])
    run = start()
    tick_until(lambda: run.greeted, 60)
    bpy.ops.preferences.addon_disable(module=ADDON)
    run.client.proc.wait(10)
    out["unregister"] = {"worker_alive": run.client.running, "state": run.state}
    out["torch_loaded"] = "torch" in sys.modules
    return out
