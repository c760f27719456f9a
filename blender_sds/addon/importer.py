"""A result folder -> a mesh object with baked vertex colours, in the active collection.

The mesh is built with `foreach_set` on whole numpy arrays (a 1M-triangle mesh in a
fraction of a second; `from_pydata` is several times slower). Colours arrive linear (the
engine converts once), so they go straight into a FLOAT_COLOR point attribute `Col`,
made active (Solid mode "Attribute" colour, painting) and the render colour, and a
material's Base Color reads it. Shading is smooth where the surface is and sharp where it
folds: `shade_smooth()`, then `set_sharp_from_angle` marks the edges whose faces meet at more
than SHARP_ANGLE (Blender's own "Shade Auto Smooth" default). The object remembers its job and
checkpoint as custom properties, which is what Refine continues from, and the fingerprint of
the mesh as imported (start_mesh.py), which is how Refine tells an edited mesh.
"""
from __future__ import annotations

import json
import math
import os

import bpy
import numpy as np
from mathutils import Matrix

from ..results import CHECKPOINT_FILE
from . import mesh_checks, start_mesh

COLOR_ATTRIBUTE = "Col"
SHARP_ANGLE = math.radians(30.0)


def load_arrays(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (V,3) f32, faces (F,3) i32, colours (V,4) f32) from a result, checked (mesh_checks.py)."""
    return mesh_checks.load_mesh(directory)


def build_mesh(name: str, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray):
    me = bpy.data.meshes.new(name)
    n_faces = len(faces)
    me.vertices.add(len(verts))
    me.loops.add(3 * n_faces)
    me.polygons.add(n_faces)
    me.vertices.foreach_set("co", verts.ravel())
    me.loops.foreach_set("vertex_index", faces.ravel())
    me.polygons.foreach_set("loop_start", np.arange(0, 3 * n_faces, 3, dtype=np.int32))
    me.update()
    me.validate()  # what mesh_checks leaves to Blender: duplicate faces, and whatever it knows and we do not
    attr = me.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    attr.data.foreach_set("color", colors.ravel())
    me.color_attributes.active_color = attr
    me.color_attributes.render_color_index = me.color_attributes.find(COLOR_ATTRIBUTE)
    me.shade_smooth()  # marching-cubes facets read better smooth...
    me.set_sharp_from_angle(angle=SHARP_ANGLE)  # ...and a crease stays a crease (Blender 4.1+)
    return me


def build_material(name: str, mean_color) -> bpy.types.Material:
    """Base Color from the `Col` attribute; the viewport (Solid) colour is the mean colour."""
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True  # always on (and deprecated) from 5.0
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None) or nodes.new("ShaderNodeBsdfPrincipled")
    attr = nodes.new("ShaderNodeVertexColor")
    attr.layer_name = COLOR_ATTRIBUTE
    attr.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    mat.diffuse_color = (*[float(c) for c in mean_color[:3]], 1.0)
    return mat


def import_result(scene, view_layer, directory: str, name: str | None = None, matrix_world=None):
    """Add the result in `directory` to the view layer's active collection; return the object.

    Reads and checks everything before creating any datablock (mesh_checks.py), so a bad
    folder leaves the file as it was."""
    directory = os.path.abspath(bpy.path.abspath(directory))
    verts, faces, colors = load_arrays(directory)
    job_text = mesh_checks.read_job(directory)
    checkpoint = os.path.join(directory, CHECKPOINT_FILE)
    name = name or _name_from_job(job_text) or "SDS Result"

    me = build_mesh(name, verts, faces, colors)
    me.materials.append(build_material(f"SDS {name}", colors.mean(axis=0)))
    ob = bpy.data.objects.new(name, me)
    if matrix_world is not None:
        ob.matrix_world = Matrix(matrix_world)  # from rows (a plain nested list would be read as columns)
    ob["sds_result"] = directory
    ob[start_mesh.FINGERPRINT_PROPERTY] = start_mesh.fingerprint(me)
    if job_text:
        ob["sds_job"] = job_text
    if os.path.isfile(checkpoint):
        ob["sds_checkpoint"] = checkpoint
    view_layer.active_layer_collection.collection.objects.link(ob)
    for other in view_layer.objects:
        if other.select_get():
            other.select_set(False)
    ob.select_set(True)
    view_layer.objects.active = ob
    return ob


def _name_from_job(job_text: str | None) -> str | None:
    try:
        prompt = json.loads(job_text)["prompt"].strip() if job_text else ""
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return prompt[:48] or None
