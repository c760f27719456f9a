"""Every failure an artist can cause, one fresh scene each (tests/addon/test_addon_errors.py)."""
import json
import os
import sys

import bpy

from .common import add_camera, call, empty_scene, install, snapshot


def run(args):
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
