"""The exported job's camera records against Blender's own projection (tests/addon/test_addon_rig.py)."""
import json
import math
import os
import random

import bpy

from .common import add_camera, call, empty_scene, install


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


def run(args):
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
