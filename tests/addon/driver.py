"""Runs inside a Blender-side Python (a venv with only the bpy wheel): installs the add-on
zip the way a user does, plays one scenario through the scripting API, and prints the
facts it saw as one line `SDS_RESULT {...}` for the pytest side to judge.

    python driver.py '{"scenario": "e2e", "zip": ..., "worker_python": ..., ...}'

BLENDER_USER_RESOURCES must point at a temp folder before bpy is imported (the caller
sets it), so nothing lands in the real user's Blender folders.
"""
import importlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

import bpy

ADDON = "bl_ext.user_default.blender_sds"


def install(zip_path):
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    return bpy.context.preferences.addons[ADDON].preferences


def addon_module(name):
    return importlib.import_module(f"{ADDON}.addon.{name}")


def empty_scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


def add_camera(scene, name, location, look_at=(0.0, 0.0, 0.0), **data):
    from mathutils import Vector
    cam = bpy.data.cameras.new(name)
    for key, value in data.items():
        setattr(cam, key, value)
    ob = bpy.data.objects.new(name, cam)
    scene.collection.objects.link(ob)
    ob.location = location
    direction = Vector(look_at) - Vector(location)
    ob.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    bpy.context.view_layer.update()
    return ob


def snapshot():
    """What an artist would notice changing in the file."""
    return {kind: sorted(x.name for x in getattr(bpy.data, kind))
            for kind in ("objects", "meshes", "materials", "images", "collections", "cameras")}


def object_facts(ob):
    me = ob.data
    attr = me.color_attributes.get("Col")
    mat = me.materials[0] if len(me.materials) else None
    reads_col = False
    if mat is not None and mat.node_tree is not None:
        for link in mat.node_tree.links:
            if (link.from_node.bl_idname == "ShaderNodeVertexColor" and link.from_node.layer_name == "Col"
                    and link.to_socket.name == "Base Color"):
                reads_col = True
    colors = []
    if attr is not None and len(attr.data):
        import numpy as np
        buf = np.empty(len(attr.data) * 4, dtype=np.float32)
        attr.data.foreach_get("color", buf)
        colors = [float(buf.min()), float(buf.max())]
    job = json.loads(ob["sds_job"]) if "sds_job" in ob else None
    return {
        "name": ob.name, "vertices": len(me.vertices), "faces": len(me.polygons),
        "col": None if attr is None else [attr.data_type, attr.domain],
        "col_active": me.color_attributes.active_color_name == "Col",
        "col_render": me.color_attributes.render_color_index == me.color_attributes.find("Col"),
        "color_range": colors, "material_reads_col": reads_col,
        "job_prompt": job and job.get("prompt"), "job_cameras_mode": job and job["cameras"]["mode"],
        "job_rig": job and len(job["cameras"].get("rig", [])), "job_steps": job and job["steps"], "job_init": job and job["init"]["checkpoint"],
        "checkpoint": ob.get("sds_checkpoint"),
        "checkpoint_exists": bool(ob.get("sds_checkpoint")) and os.path.isfile(ob["sds_checkpoint"]),
        "result_dir": ob.get("sds_result"),
        "collection": [c.name for c in ob.users_collection],
        "active_collection": bpy.context.view_layer.active_layer_collection.collection.name,
        "matrix_world": [list(r) for r in ob.matrix_world],
    }


def call(op, **kwargs):
    """(returned set, error message): bpy.ops raises RuntimeError when the operator reported an error."""
    try:
        return sorted(op(**kwargs)), ""
    except RuntimeError as exc:
        return None, str(exc)


def tree_listing(folder):
    out = []
    for root, dirs, files in os.walk(folder):
        for f in files:
            out.append(os.path.relpath(os.path.join(root, f), folder))
    return sorted(out)


# -- scenarios -----------------------------------------------------------------------------------

def scenario_install(args):
    prefs = install(args["zip"])
    import addon_utils
    s = bpy.context.scene.sds
    mod = sys.modules[ADDON]
    ext_dir = os.path.dirname(mod.__file__)
    ops = {name: hasattr(bpy.types, cls) for name, cls in (
        ("generate", "SDS_OT_generate"), ("refine", "SDS_OT_refine"), ("cancel", "SDS_OT_cancel"),
        ("export_job", "SDS_OT_export_job"), ("import_result", "SDS_OT_import_result"))}
    panel = getattr(bpy.types, "SDS_PT_main", None)
    facts = {
        "package": mod.__name__, "ext_dir": ext_dir, "files": tree_listing(ext_dir),
        "ops": ops, "panel_category": panel and panel.bl_category,
        "prefs": {"model": prefs.model, "device": prefs.device, "worker_python": prefs.worker_python,
                  "low_vram": prefs.low_vram, "worker_mode": prefs.worker_mode},
        "scene_props": sorted(p.identifier for p in s.bl_rna.properties if p.identifier != "rna_type"),
        "camera_sources": sorted(i.identifier for i in s.bl_rna.properties["camera_source"].enum_items),
        "presets": sorted(i.identifier for i in s.bl_rna.properties["preset"].enum_items),
        "cache_dir": addon_module("paths").cache_dir(prefs),
        "user_resources": os.environ["BLENDER_USER_RESOURCES"],
        "torch_loaded": "torch" in sys.modules,
    }
    # Disable and enable again: unregister must leave nothing behind that breaks register.
    bpy.ops.preferences.addon_disable(module=ADDON)
    facts["after_disable"] = hasattr(bpy.types.Scene, "sds")
    addon_utils.enable(ADDON, default_set=True)
    facts["after_enable"] = hasattr(bpy.types.Scene, "sds")
    return facts


RIG_CASES = {
    "landscape_auto": dict(res=(1920, 1080, 100), pixel=(1, 1), cam=dict(lens=35, sensor_fit="AUTO")),
    "portrait_auto_shift": dict(res=(1080, 1920, 50), pixel=(1, 1),
                                cam=dict(lens=50, sensor_fit="AUTO", shift_x=0.1, shift_y=-0.2)),
    "vertical_shift_y": dict(res=(1280, 720, 100), pixel=(1, 1),
                             cam=dict(lens=28, sensor_fit="VERTICAL", sensor_height=20.0, shift_y=0.15)),
    "pixel_aspect_2": dict(res=(800, 600, 100), pixel=(2, 1), cam=dict(lens=40, sensor_fit="HORIZONTAL",
                                                                        shift_x=-0.05)),
    "pixel_aspect_y2_auto": dict(res=(640, 640, 100), pixel=(1, 2), cam=dict(lens=30, sensor_fit="AUTO",
                                                                              shift_y=0.1)),
}


def scenario_rig(args):
    """Project random points with the exported job's intrinsics and with Blender's own function."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    prefs = install(args["zip"])
    prefs.model = args["model"]
    out = {}
    rng = random.Random(7)
    for case, spec in RIG_CASES.items():
        scene = empty_scene()
        r = scene.render
        r.resolution_x, r.resolution_y, r.resolution_percentage = spec["res"]
        r.pixel_aspect_x, r.pixel_aspect_y = spec["pixel"]
        ob = add_camera(scene, "Cam", (3.0, -4.0, 2.0), look_at=(0.2, 0.1, 0.3), **spec["cam"])
        ob.scale = (1.5, 0.7, 2.0)  # scale must be removed from c2w, and must not change the picture
        bpy.context.view_layer.update()
        scene.sds.prompt = "rig test"
        scene.sds.camera_source = "SCENE"
        path = os.path.join(args["tmp"], f"{case}.json")
        ret, err = call(bpy.ops.sds.export_job, filepath=path)
        if err:
            out[case] = {"error": err}
            continue
        rec = json.load(open(path))["cameras"]["rig"][0]
        c2w = rec["c2w"]
        rot = [[c2w[i][j] for j in range(3)] for i in range(3)]
        ortho = max(abs(sum(rot[k][i] * rot[k][j] for k in range(3)) - (1.0 if i == j else 0.0))
                    for i in range(3) for j in range(3))
        w, h = rec["width"], rec["height"]
        worst, n = 0.0, 0
        while n < 200:
            p = Vector((rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-1.5, 2)))
            ndc = world_to_camera_view(scene, ob, p)
            if ndc.z <= 0.1 or not (-0.5 < ndc.x < 1.5 and -0.5 < ndc.y < 1.5):
                continue
            d = [p[i] - c2w[i][3] for i in range(3)]
            cam = [sum(rot[k][i] * d[k] for k in range(3)) for i in range(3)]  # R^T (p - t)
            u = rec["cx"] + rec["fx"] * cam[0] / -cam[2]
            v = rec["cy"] - rec["fy"] * cam[1] / -cam[2]
            worst = max(worst, math.hypot(u - ndc.x * w, v - (1.0 - ndc.y) * h))
            n += 1
        out[case] = {"max_px_error": worst, "width": w, "height": h, "orthonormal_error": ortho,
                     "record": {k: rec[k] for k in ("fx", "fy", "cx", "cy", "type", "name")}}
    return out


def scenario_errors(args):
    prefs = install(args["zip"])
    prefs.model = args["model"]
    out = {}

    def case(name, setup, op=None, **kwargs):
        scene = empty_scene()
        prefs.worker_python = args["worker_python"]
        prefs.worker_mode = "PYTHON"
        scene.sds.prompt = "a red ball"
        scene.sds.job_overrides = json.dumps(args["overrides"])
        setup(scene)
        before = snapshot()
        ret, err = call(op or bpy.ops.sds.generate, **kwargs)
        out[name] = {"returned": ret, "message": err, "scene_same": snapshot() == before,
                     "status": scene.sds.status, "last_error": scene.sds.last_error,
                     "running": scene.sds.is_running}

    def ortho(scene):
        add_camera(scene, "Ortho", (0, -5, 1)).data.type = "ORTHO"
        scene.sds.camera_source = "SCENE"

    def exits_at_once(scene):
        script = os.path.join(args["tmp"], "fake_worker.sh")
        with open(script, "w") as fh:
            fh.write("#!/bin/sh\necho 'fatal: this is not a worker' >&2\nexit 3\n")
        os.chmod(script, 0o755)
        prefs.worker_python = script

    def set_attr(obj_getter, **values):
        def setup(scene):
            target = obj_getter(scene)
            for k, v in values.items():
                setattr(target, k, v)
        return setup

    case("empty_prompt", set_attr(lambda s: s.sds, prompt="   "))
    case("no_camera", set_attr(lambda s: s.sds, camera_source="SCENE"))
    case("none_selected", lambda s: (add_camera(s, "Cam", (0, -5, 1)), setattr(s.sds, "camera_source", "SELECTED")))
    case("orthographic", ortho)
    case("panoramic", lambda s: (ortho(s), setattr(s.objects["Ortho"].data, "type", "PANO")))
    case("worker_missing", lambda s: setattr(prefs, "worker_python", "/nonexistent/bin/python3"))
    case("worker_empty", lambda s: setattr(prefs, "worker_python", ""))
    case("worker_exits", exits_at_once)
    case("worker_without_torch", lambda s: setattr(prefs, "worker_python", sys.executable))
    case("remote", lambda s: setattr(prefs, "worker_mode", "REMOTE"))
    case("bad_overrides_json", set_attr(lambda s: s.sds, job_overrides="{steps: 3"))
    case("bad_override_value", set_attr(lambda s: s.sds, job_overrides='{"render": {"resolution": 2}}'))
    case("import_not_a_result", lambda s: None, bpy.ops.sds.import_result, directory=args["tmp"])
    case("refine_plain_object", lambda s: _active_cube(s), bpy.ops.sds.refine)
    case("export_to_folder", lambda s: None, bpy.ops.sds.export_job, filepath=args["tmp"])
    case("cancel_idle", lambda s: None, bpy.ops.sds.cancel)
    case("setup_worker_offline", lambda s: None, bpy.ops.sds.setup_worker)
    out["torch_loaded"] = "torch" in sys.modules
    out["online_access"] = bpy.app.online_access
    return out


def _active_cube(scene):
    me = bpy.data.meshes.new("Cube")
    ob = bpy.data.objects.new("Cube", me)
    scene.collection.objects.link(ob)
    bpy.context.view_layer.objects.active = ob


def two_camera_scene():
    scene = empty_scene()
    add_camera(scene, "CamFront", (0.0, -3.5, 0.8))
    add_camera(scene, "CamSide", (3.0, -1.5, 1.2))
    return scene


def setup_run(args):
    prefs = install(args["zip"])
    prefs.worker_python = args["worker_python"]
    prefs.model = args["model"]
    prefs.device = "CPU"
    scene = two_camera_scene()
    s = scene.sds
    s.prompt = "a red ball"
    s.seed = 3
    s.bounds_size = 2.0
    s.camera_source = "SCENE"
    s.job_overrides = json.dumps(args["overrides"])
    return prefs, scene


def scenario_e2e(args):
    prefs, scene = setup_run(args)
    ext_dir = os.path.dirname(sys.modules[ADDON].__file__)
    ext_files = tree_listing(ext_dir)
    out = {"timings": {}}

    t = time.monotonic()
    ret, err = call(bpy.ops.sds.generate)
    out["timings"]["generate"] = time.monotonic() - t
    gen = bpy.context.view_layer.objects.active
    out["generate"] = {"returned": ret, "message": err, "object": gen and object_facts(gen),
                       "status": scene.sds.status, "step": scene.sds.step, "steps": scene.sds.steps_total,
                       "progress": scene.sds.progress,
                       "preview": scene.sds.preview_image and scene.sds.preview_image.size[:],
                       "running": scene.sds.is_running}
    if err:
        return out
    gen_name = gen.name
    gen_mesh = gen.data.name
    gen_verts = len(gen.data.vertices)

    # Refine from the scene cameras, after moving the object: a new object, the original untouched.
    gen.location = (0.5, 0.0, 0.0)
    bpy.context.view_layer.update()
    t = time.monotonic()
    ret, err = call(bpy.ops.sds.refine, steps=1)
    out["timings"]["refine"] = time.monotonic() - t
    ref = bpy.context.view_layer.objects.active
    out["refine"] = {"returned": ret, "message": err, "object": ref and object_facts(ref),
                     "original_still_there": gen_name in bpy.data.objects,
                     "original_mesh_same": bpy.data.objects[gen_name].data.name == gen_mesh
                     and len(bpy.data.objects[gen_name].data.vertices) == gen_verts}

    # Export the job, run the engine's command line on it, import the result folder.
    job_path = os.path.join(args["tmp"], "exported", "job.json")
    ret, err = call(bpy.ops.sds.export_job, filepath=job_path)
    out["export"] = {"returned": ret, "message": err, "exists": os.path.isfile(job_path)}
    result_dir = os.path.join(args["tmp"], "cli-result")
    t = time.monotonic()
    env = dict(os.environ, PYTHONPATH=args["repo"], PYTHONPYCACHEPREFIX=os.path.join(args["tmp"], "pyc"))
    cli = subprocess.run([args["worker_python"], "-m", "blender_sds.engine", "run", job_path, "--out", result_dir,
                          "--progress", "none", "--device", "cpu"], capture_output=True, text=True, env=env)
    out["timings"]["cli"] = time.monotonic() - t
    out["cli"] = {"code": cli.returncode, "stderr": cli.stderr[-2000:]}
    ret, err = call(bpy.ops.sds.import_result, directory=result_dir)
    imp = bpy.context.view_layer.objects.active
    out["import"] = {"returned": ret, "message": err, "object": imp and object_facts(imp)}

    out["objects"] = sorted(o.name for o in bpy.data.objects)
    out["torch_loaded"] = "torch" in sys.modules
    out["diffusers_loaded"] = "diffusers" in sys.modules
    out["ext_files_unchanged"] = tree_listing(ext_dir) == ext_files
    return out


def scenario_lifecycle(args):
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


# -- faults the add-on survives (tests/addon/test_addon_faults.py) --------------------------------

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


def changes(before):
    """What the file gained or lost since `before` (a snapshot), per kind; {} when nothing."""
    now = snapshot()
    out = {}
    for kind in now:
        gained = sorted(set(now[kind]) - set(before[kind]))
        lost = sorted(set(before[kind]) - set(now[kind]))
        if gained or lost:
            out[kind] = {"gained": gained, "lost": lost}
    return out


def fake_worker(folder, name, body):
    """A program that is not our worker, for Worker Python (stdlib only, so any Python runs it)."""
    path = os.path.join(folder, name)
    with open(path, "w") as fh:
        fh.write(f"#!{sys.executable}\nimport json, sys, time\n{body}\n")
    os.chmod(path, 0o755)
    return path


def scenario_faults(args):
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


def scenario_remote(args):
    """REMOTE mode against a real `serve` the test started: generate, refine, a wrong token,
    no server, and another file loaded mid-run."""
    prefs, scene = setup_run(args)
    runner = addon_module("runner")
    job_builder = addon_module("job_builder")
    prefs.worker_mode = "REMOTE"
    prefs.remote_address = f"127.0.0.1:{args['port']}"
    prefs.remote_token = args["token"]
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


# -- the pocket world as a model choice (tests/addon/test_addon_pocket.py) --------------------------

def scenario_pocket(args):
    """Model Source = Pocket World: a short real run through a worker (with its progress lines
    on stdout), a prompt outside the world's words, and the old "pocket" spelling in Model."""
    import contextlib
    import io
    prefs, scene = setup_run(args)
    rna = prefs.bl_rna.properties["model_source"]
    out = {"default_source": prefs.model_source,
           "sources": {i.identifier: [i.name, i.description] for i in rna.enum_items}}

    def exported(name):
        path = os.path.join(args["tmp"], f"{name}.json")
        ret, err = call(bpy.ops.sds.export_job, filepath=path)
        return json.load(open(path))["guidance"] if ret == ["FINISHED"] else err

    out["sd_guidance"] = exported("sd")
    prefs.model_source = "POCKET"
    prefs.model = ""  # the pocket world needs no model
    scene.sds.prompt = "a red cube"
    out["pocket_guidance"] = exported("pocket")

    console = io.StringIO()
    before = snapshot()
    with contextlib.redirect_stdout(console):
        ret, err = call(bpy.ops.sds.generate)
    ob = bpy.context.view_layer.objects.active
    out["generate"] = {"returned": ret, "message": err, "object": ob and object_facts(ob),
                       "changes": changes(before), "console": console.getvalue().splitlines(),
                       "job_guidance": ob and json.loads(ob["sds_job"])["guidance"]}

    scene = two_camera_scene()
    scene.sds.prompt, scene.sds.camera_source = "a ceramic teapot", "SCENE"
    scene.sds.job_overrides = json.dumps(args["overrides"])
    before = snapshot()
    ret, err = call(bpy.ops.sds.generate)
    out["unknown_prompt"] = {"returned": ret, "message": err, "scene_same": snapshot() == before,
                             "last_error": scene.sds.last_error, "status": scene.sds.status,
                             "running": scene.sds.is_running}

    prefs.model_source = "STABLE_DIFFUSION"
    prefs.model = " Pocket "  # what Model held before Model Source existed
    scene.sds.prompt = "a red cube"
    out["legacy_guidance"] = exported("legacy")
    out["torch_loaded"] = "torch" in sys.modules
    return out


SCENARIOS = {"install": scenario_install, "rig": scenario_rig, "errors": scenario_errors, "e2e": scenario_e2e,
             "lifecycle": scenario_lifecycle, "faults": scenario_faults, "remote": scenario_remote,
             "pocket": scenario_pocket}


def main():
    args = json.loads(sys.argv[1])
    try:
        result = SCENARIOS[args["scenario"]](args)
    except Exception:
        result = {"driver_error": traceback.format_exc()}
    result["blender"] = bpy.app.version_string
    print("SDS_RESULT " + json.dumps(result), flush=True)
    if ADDON in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_disable(module=ADDON)  # 4.5 can hang at exit with classes registered


if __name__ == "__main__":
    main()
