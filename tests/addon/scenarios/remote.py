"""REMOTE mode against a real `serve` the test started (tests/addon/test_addon_faults.py)."""
import json
import os
import sys
import time

import bpy

from .common import addon_module, call, object_facts, setup_run, snapshot


def run(args):
    """REMOTE mode against a real `serve` the test started (TLS, its fingerprint pinned as an
    artist pastes it): generate, refine, a wrong token, a wrong or missing fingerprint, no
    server, and another file loaded mid-run."""
    prefs, scene = setup_run(args)
    runner = addon_module("runner")
    job_builder = addon_module("job_builder")
    prefs.worker_mode = "REMOTE"
    prefs.remote_address = f"127.0.0.1:{args['port']}"
    prefs.remote_token = args["token"]
    prefs.remote_tls = True
    prefs.remote_fingerprint = args["fingerprint"]
    prefs.worker_python = "/nonexistent/python"  # proves the local worker is never used
    out = {"cache": addon_module("paths").cache_dir(prefs)}

    ret, err = call(bpy.ops.sds.generate)
    gen = bpy.context.view_layer.objects.active
    out["generate"] = {"returned": ret, "message": err, "object": gen and object_facts(gen),
                       "files": gen and sorted(os.listdir(gen["sds_result"])),
                       "preview": scene.sds.preview_image and list(scene.sds.preview_image.size[:])}
    if err:
        return out
    job = json.loads(gen["sds_job"])
    out["generate"]["job_model"] = job["guidance"]["model"]

    ret, err = call(bpy.ops.sds.refine, steps=1)
    ref = bpy.context.view_layer.objects.active
    out["refine"] = {"returned": ret, "message": err, "object": ref and object_facts(ref)}

    def refused(name, **settings):
        saved = {k: getattr(prefs, k) for k in settings}
        for k, v in settings.items():
            setattr(prefs, k, v)
        before = snapshot()
        ret, err = call(bpy.ops.sds.generate)
        out[name] = {"returned": ret, "message": err, "scene_same": snapshot() == before,
                     "last_error": bpy.context.scene.sds.last_error}
        for k, v in saved.items():
            setattr(prefs, k, v)

    refused("wrong_token", remote_token="not-the-token-at-all")
    refused("no_token", remote_token="")
    refused("wrong_fingerprint", remote_fingerprint=":".join(["AB"] * 32))
    refused("no_fingerprint", remote_fingerprint="")
    out["fingerprint"] = args["fingerprint"]
    refused("no_server", remote_address="127.0.0.1:9")
    refused("bad_address", remote_address="gpu-box")

    # Another file loaded during a remote run: the connection is dropped, the server's job stops.
    run = runner.start(bpy.context, job_builder.generate_job(bpy.context, prefs), os.getcwd(), name="async")
    runner.follow(run)
    end = time.monotonic() + 120
    while time.monotonic() < end and run.state != "running" and runner._tick() is not None:
        time.sleep(0.05)
    reached = run.state
    bpy.ops.wm.read_homefile(use_empty=True)
    run.client._reader.join(10)
    out["load_pre"] = {"reached": reached, "state": run.state, "connected": run.client.running,
                       "active": runner.active() is not None}
    out["torch_loaded"] = "torch" in sys.modules
    return out
