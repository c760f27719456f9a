"""The main job in headless Blender, as a user does it: install the extension zip, choose the
offline pocket world as the model, type "a red cube", press Generate (the add-on starts
the engine worker with WORKER_PYTHON, follows it and imports the mesh), then save a .blend
and render the object from two sides. Runs in a Blender-side Python (bpy wheel, no torch):

    .venv-bpy45/bin/python scripts/demo_blend.py ZIP WORKER_PYTHON OUT_BLEND OUT_PNG [--steps N]

--steps is for trying the script quickly; the demo uses the add-on's defaults. Run results
(mesh.npz, log.jsonl, worker.log, checkpoint.pt) are kept in out/sds-cache/.
"""
import argparse
import atexit
import math
import os
import shutil
import sys
import tempfile

# Keep the artist's real Blender folders untouched: the user resources go to a temp folder,
# removed at exit (one the caller named is theirs, and stays).
if "BLENDER_USER_RESOURCES" not in os.environ:
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="sds-demo-blender-")
    atexit.register(shutil.rmtree, os.environ["BLENDER_USER_RESOURCES"], ignore_errors=True)

import bpy  # noqa: E402
import numpy as np  # noqa: E402
from mathutils import Vector  # noqa: E402

PROMPT = "a red cube"


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


def install(zip_path: str):
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    addon = next(k for k in bpy.context.preferences.addons.keys() if k.endswith("blender_sds"))
    return addon, bpy.context.preferences.addons[addon].preferences


def generate(prefs, worker_python: str, cache: str, steps: int):
    """Set what a user sets in the preferences and the SDS panel, and press Generate."""
    prefs.worker_mode = "PYTHON"
    prefs.worker_python = os.path.abspath(worker_python)
    prefs.model_source = "POCKET"
    prefs.cache_folder = cache
    s = bpy.context.scene.sds
    s.prompt = PROMPT
    s.steps = steps  # 0: the preset's
    print(f"== Generate: {PROMPT!r}, model {prefs.model_source}, preset {s.preset}, cameras {s.camera_source}, "
          f"worker {prefs.worker_python}", flush=True)
    try:
        bpy.ops.sds.generate()
    except RuntimeError as exc:  # the operator's error report
        raise SystemExit(f"Generate failed: {str(exc).strip()}") from None
    return bpy.context.view_layer.objects.active


def stage(scene, ob):
    """A camera, a sun and a light grey world around the generated object; returns its centre."""
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
    return cam, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("zip", "worker_python", "out_blend", "out_png"):
        parser.add_argument(name)
    parser.add_argument("--steps", type=int, default=0, help="optimisation steps (0: the add-on's preset)")
    args = parser.parse_args()
    addon, prefs = install(args.zip)
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    cache = os.path.join(os.path.dirname(os.path.abspath(args.out_blend)), "sds-cache")
    ob = generate(prefs, args.worker_python, cache, args.steps)
    cam, target = stage(scene, ob)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(args.out_blend))
    with tempfile.TemporaryDirectory(prefix="sds-demo-render-") as tmp:
        sides = [render_side(scene, cam, target, az, os.path.join(tmp, f"side{i}.png"))
                 for i, az in enumerate((-30.0, 150.0))]
    both = np.concatenate(sides, axis=1)
    image = bpy.data.images.new("demo", both.shape[1], both.shape[0], alpha=True)
    image.pixels.foreach_set(both[::-1].ravel())
    image.filepath_raw = os.path.abspath(args.out_png)
    image.file_format = "PNG"
    image.save()
    print(f"saved {args.out_blend} ('{ob.name}': {len(ob.data.polygons)} faces; result {ob['sds_result']}) "
          f"and {args.out_png}")
    bpy.ops.preferences.addon_disable(module=addon)  # bpy 4.5 can hang at exit with classes registered


if __name__ == "__main__":
    main()
