"""Import Result on each of the folders the test made (good and bad), one Blender process for all
(tests/addon/test_addon_import_checks.py): what the operator said and what the file gained."""
import bpy
import numpy as np

from .common import call, changes, empty_scene, install, snapshot


def run(args):
    install(args["zip"])
    out = {}
    for case, folder in args["cases"].items():
        empty_scene()
        before = snapshot()
        ret, err = call(bpy.ops.sds.import_result, directory=folder)
        out[case] = {"returned": ret, "message": err.strip(), "changes": changes(before),
                     "scene_same": snapshot() == before}
        ob = bpy.context.view_layer.objects.active
        if ret is not None and ob is not None:
            out[case]["object"] = _facts(ob)
    return out


def _facts(ob):
    me = ob.data
    co = np.empty(len(me.vertices) * 3, dtype=np.float32)
    me.vertices.foreach_get("co", co)
    col = np.empty(len(me.vertices) * 4, dtype=np.float32)
    me.color_attributes["Col"].data.foreach_get("color", col)
    return {"name": ob.name, "vertices": len(me.vertices), "faces": len(me.polygons),
            "finite": bool(np.isfinite(co).all()), "color_range": [float(col.min()), float(col.max())],
            "has_job": "sds_job" in ob, "material": len(me.materials) == 1}
