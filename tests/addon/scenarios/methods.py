"""The Method choice (tests/addon/test_addon_methods.py): the registry's methods as
`scene.sds.method`, drawn in the panel, Job Overrides over them, and one short real run per
method, with the job the worker ran read back from its own result folder.

With `port` (and `token`, `server_root`) in the payload the runs go to a `serve` the test
started, one engine process for all of them; without, each run starts a local worker."""
import json
import os
import sys
import time

import bpy

from .common import call, object_facts, panel_drawn, setup_run


def _read_run(folder):
    """The guidance of the job the worker ran (its job.json), each logged step's prediction
    count, and the engine's own seconds for the run."""
    with open(os.path.join(folder, "job.json")) as f:
        guidance = json.load(f)["guidance"]
    with open(os.path.join(folder, "log.jsonl")) as f:
        events = [json.loads(line) for line in f if line.strip()]
    done = [e for e in events if e["type"] == "done"]
    return (guidance, [e["figures"]["predictions"] for e in events if e["type"] == "progress"],
            done[0]["seconds"] if done else None)


def run(args):
    prefs, scene = setup_run(args)
    remote = "port" in args
    if remote:
        prefs.worker_mode = "REMOTE"
        prefs.remote_address = f"127.0.0.1:{args['port']}"
        prefs.remote_token = args["token"]
        prefs.remote_fingerprint = args["fingerprint"]  # as serve printed it
        jobs = os.path.join(args["server_root"], "jobs")  # the server's own folder per job
    s = scene.sds
    rna = s.bl_rna.properties["method"]
    out = {"items": [[i.identifier, i.name, i.description, i.value] for i in rna.enum_items],
           "default": rna.default, "initial": s.method, "property_description": rna.description,
           "panel": panel_drawn(bpy.context), "timings": {}}

    def exported(name, overrides):
        s.job_overrides = json.dumps({**args["overrides"], **overrides})
        path = os.path.join(args["tmp"], f"{name}.json")
        ret, err = call(bpy.ops.sds.export_job, filepath=path)
        return json.load(open(path))["guidance"] if ret == ["FINISHED"] else err

    # Job Overrides are merged after the Method, so a tech artist's keys win; a clash is named.
    s.method = "perp-neg"
    out["overridden"] = exported("overridden", {"guidance": {"rule": "debiased"}})
    out["clash"] = exported("clash", {"guidance": {"view_dependent": False}})
    s.method = "esd"  # a method with a nested key: an override of one of its keys keeps the rest
    out["nested"] = exported("nested", {"guidance": {"estimator": {"lr": 0.002}}})
    s.job_overrides = json.dumps(args["overrides"])

    out["runs"] = {}
    for name in [item[0] for item in out["items"]]:
        s.method = name
        before = set(os.listdir(jobs)) if remote and os.path.isdir(jobs) else set()
        t = time.monotonic()
        ret, err = call(bpy.ops.sds.generate)
        seconds = round(time.monotonic() - t, 2)
        ob = bpy.context.view_layer.objects.active
        run = {"returned": ret, "message": err, "object": ob and object_facts(ob)}
        if ob is not None and ret == ["FINISHED"]:
            run["job_guidance"] = json.loads(ob["sds_job"])["guidance"]  # the result folder's job.json
            # The job the worker itself wrote: in the server's job folder when remote (the add-on
            # writes its own job.json into the local result folder then), else the result folder.
            folder = os.path.join(jobs, sorted(set(os.listdir(jobs)) - before)[-1], "out") if remote \
                else ob["sds_result"]
            run["ran_guidance"], run["predictions"], engine_seconds = _read_run(folder)
            out["timings"][name] = {"generate": seconds, "engine": engine_seconds}
        out["runs"][name] = run
    out["objects"] = len(bpy.data.objects)
    out["torch_loaded"] = "torch" in sys.modules
    return out
