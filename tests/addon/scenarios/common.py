"""Blender-side helpers every scenario shares: install the add-on zip the way a user does,
build small scenes, and read back what an artist would notice (objects, snapshots, changes).
Runs inside a Blender-side Python only (imports bpy)."""
import importlib
import json
import os

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


class LayoutRecorder:
    """Stands in for a UILayout: records the properties drawn, the labels ("label:TEXT") and the
    progress bar's text ("progress:TEXT"); row(), box(), operator(), ... give a layout again."""

    def __init__(self, drawn):
        self.drawn = drawn

    def prop(self, data, name, **kwargs):
        self.drawn.append(name)

    def label(self, text="", **kwargs):
        self.drawn.append("label:" + text)

    def progress(self, text="", **kwargs):
        self.drawn.append("progress:" + text)

    def __getattr__(self, name):
        return lambda *args, **kwargs: self


def panel_drawn(context) -> list[str]:
    """What the SDS panel draws in `context`, as LayoutRecorder records it."""
    import types
    drawn = []
    addon_module("panel").SDS_PT_main.draw(types.SimpleNamespace(layout=LayoutRecorder(drawn)), context)
    return drawn
