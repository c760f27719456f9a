"""Bring a finished engine result into Blender headless: install the extension zip the
way a user does, run `sds.import_result`, save a .blend and render the object from two
sides. Runs in a Blender-side Python (bpy wheel, no torch):

    .venv-bpy45/bin/python scripts/demo_blend.py ZIP RESULT_DIR OUT_BLEND OUT_PNG
"""
import math
import os
import sys
import tempfile

# Keep the artist's real Blender folders untouched: the user resources go to a temp folder.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="sds-demo-blender-"))

import bpy  # noqa: E402
import numpy as np  # noqa: E402
from mathutils import Vector  # noqa: E402


def render_side(scene, camera, target: Vector, azimuth_deg: float, path: str) -> np.ndarray:
    distance = 4.0
    az, el = math.radians(azimuth_deg), math.radians(20.0)
    camera.location = target + distance * Vector((math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el),
                                                  math.sin(el)))
    camera.rotation_euler = (target - camera.location).to_track_quat("-Z", "Y").to_euler()
    scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(path)
    pixels = np.array(image.pixels[:], dtype=np.float32).reshape(image.size[1], image.size[0], 4)
    bpy.data.images.remove(image)
    return pixels[::-1]


def main(zip_path: str, result: str, out_blend: str, out_png: str) -> None:
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    if bpy.ops.sds.import_result(directory=result) != {"FINISHED"}:
        raise SystemExit(f"import_result failed for {result}")
    ob = bpy.context.view_layer.objects.active
    target = sum((ob.matrix_world @ Vector(c) for c in ob.bound_box), Vector()) / 8
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = (math.radians(40), 0, math.radians(30))
    sun.data.energy = 3.0
    scene.collection.objects.link(sun)
    world = bpy.data.worlds.new("World")
    world.color = (0.8, 0.8, 0.8)
    scene.world = world
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.render.resolution_x = scene.render.resolution_y = 256
    scene.render.image_settings.file_format = "PNG"
    bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(out_blend))
    tmp = tempfile.mkdtemp(prefix="sds-demo-render-")
    sides = [render_side(scene, cam, target, az, os.path.join(tmp, f"side{i}.png"))
             for i, az in enumerate((-30.0, 150.0))]
    both = np.concatenate(sides, axis=1)
    image = bpy.data.images.new("demo", both.shape[1], both.shape[0], alpha=True)
    image.pixels.foreach_set(both[::-1].ravel())
    image.filepath_raw = os.path.abspath(out_png)
    image.file_format = "PNG"
    image.save()
    print(f"saved {out_blend} ({len(ob.data.polygons)} faces) and {out_png}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
