"""The picture of docs/ADDON.md "The artist's mesh, both ways": a blockout, the result generated
from it (Start From = Active Mesh), that result made 1.6x taller in Edit Mode, and what Refine
(Source: Auto, so from the edited mesh) makes of it, side by side. Pocket world, small
settings, Workbench render with the vertex colours. Runs in a Blender-side Python:

    python build_addon.py --out dist
    .venv-bpy45/bin/python scripts/render_artist_mesh.py dist/blender_sds-0.1.0.zip .venv/bin/python \\
        docs/addon-artist-mesh.png [--steps 60]
"""
import argparse
import json
import math
import os
import sys
import tempfile

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="sds-render-blender-"))

import bpy  # noqa: E402  (before bmesh, which only bpy makes importable)
import bmesh  # noqa: E402
from mathutils import Matrix, Vector  # noqa: E402

SMALL = {"render": {"resolution": 32, "samples": 16}, "mesh": {"resolution": 64}}


def blockout(scene):
    """Two overlapping cubes, painted (byte colours, corners), as an artist blocks a shape out."""
    me = bpy.data.meshes.new("Blockout")
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bmesh.ops.create_cube(bm, size=0.7, matrix=Matrix.Translation((0.35, 0.0, 0.55)))
    bm.to_mesh(me)
    bm.free()
    attr = me.color_attributes.new("Paint", "BYTE_COLOR", "CORNER")
    for loop, value in zip(me.loops, attr.data):
        value.color_srgb = (0.85, 0.15, 0.1, 1.0) if loop.vertex_index < 8 else (0.95, 0.8, 0.2, 1.0)
    me.color_attributes.active_color = attr
    ob = bpy.data.objects.new("Blockout", me)
    scene.collection.objects.link(ob)
    ob.location = (0.0, 0.0, 0.5)
    return ob


def press(op, **kwargs):
    try:
        op(**kwargs)
    except RuntimeError as exc:
        raise SystemExit(f"{op.idname_py()} failed: {str(exc).strip()}") from None
    return bpy.context.view_layer.objects.active


def make_active(ob):
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    ob.select_set(True)
    bpy.context.view_layer.objects.active = ob


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("zip")
    parser.add_argument("worker_python")
    parser.add_argument("out_png")
    parser.add_argument("--steps", type=int, default=60, help="score distillation steps of each run")
    args = parser.parse_args(sys.argv[1:])

    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.extensions.package_install_files(filepath=os.path.abspath(args.zip), repo="user_default",
                                             enable_on_install=True)
    addon = next(k for k in bpy.context.preferences.addons.keys() if k.endswith("blender_sds"))
    prefs = bpy.context.preferences.addons[addon].preferences
    prefs.worker_python, prefs.model_source, prefs.device = os.path.abspath(args.worker_python), "POCKET", "CPU"
    scene = bpy.context.scene
    s = scene.sds
    s.prompt, s.preset, s.steps, s.start_from = "a red cube", "DRAFT", args.steps, "ACTIVE_MESH"
    s.job_overrides = json.dumps(SMALL)
    for name, location in (("CamFront", (0.3, -3.5, 1.2)), ("CamSide", (3.3, -1.2, 1.4))):
        cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
        scene.collection.objects.link(cam)
        cam.location = location
        cam.rotation_euler = (Vector((0.2, 0.0, 0.6)) - Vector(location)).to_track_quat("-Z", "Y").to_euler()

    block = blockout(scene)
    make_active(block)
    generated = press(bpy.ops.sds.generate)
    edited = generated.copy()
    edited.data = generated.data.copy()
    edited.name = "Edited"
    scene.collection.objects.link(edited)
    make_active(edited)
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(edited.data)
    low = min(v.co.z for v in bm.verts)
    for v in bm.verts:
        v.co.z = low + 1.6 * (v.co.z - low)
    bmesh.update_edit_mesh(edited.data)
    bpy.ops.object.mode_set(mode="OBJECT")
    refined = press(bpy.ops.sds.refine, source="AUTO", camera_source="SCENE")

    # side by side along x, standing on the same floor
    for i, ob in enumerate((block, generated, edited, refined)):
        ob.matrix_world = Matrix.Translation((2.0 * i, 0.0, 0.0)) @ ob.matrix_world
    for ob in scene.objects:
        if ob.type == "CAMERA":
            ob.hide_render = True
    bpy.context.view_layer.update()
    width, height = 960, 300
    corners = [ob.matrix_world @ Vector(c) for ob in (block, generated, edited, refined) for c in ob.bound_box]
    target = sum(corners, Vector()) / len(corners)
    cam = bpy.data.objects.new("Shot", bpy.data.cameras.new("Shot"))
    scene.collection.objects.link(cam)
    cam.data.type = "ORTHO"
    az, el = math.radians(25.0), math.radians(20.0)
    cam.location = target + 20.0 * Vector((math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)))
    cam.rotation_euler = (target - cam.location).to_track_quat("-Z", "Y").to_euler()
    bpy.context.view_layer.update()
    seen = [cam.matrix_world.inverted() @ c for c in corners]  # the objects in the camera's frame: frame them
    lo = Vector((min(p.x for p in seen), min(p.y for p in seen), 0.0))
    hi = Vector((max(p.x for p in seen), max(p.y for p in seen), 0.0))
    cam.location = cam.matrix_world @ ((lo + hi) / 2)
    cam.data.ortho_scale = 1.08 * max(hi.x - lo.x, (hi.y - lo.y) * width / height)
    scene.camera = cam
    world = bpy.data.worlds.new("Backdrop")
    world.color = (0.85, 0.85, 0.85)
    scene.world = world
    scene.render.engine = "BLENDER_WORKBENCH"
    shading = scene.display.shading
    shading.light, shading.color_type = "STUDIO", "VERTEX"
    shading.show_cavity = False
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.compression = 100
    scene.render.film_transparent = False
    scene.render.filepath = os.path.abspath(args.out_png)
    bpy.ops.render.render(write_still=True)
    print(f"wrote {args.out_png} ({os.path.getsize(args.out_png) // 1024} KB); refined from "
          f"{json.loads(refined['sds_job'])['init']}")
    bpy.ops.preferences.addon_disable(module=addon)


if __name__ == "__main__":
    main()
