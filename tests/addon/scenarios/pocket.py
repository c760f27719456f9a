"""The pocket world as a model choice (tests/addon/test_addon_pocket.py)."""
import json
import os
import sys

import bpy

from .common import call, changes, object_facts, setup_run, snapshot, two_camera_scene


def run(args):
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
