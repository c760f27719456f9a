"""A result folder -> a mesh object with baked vertex colours, in the active collection.

The mesh is built with `foreach_set` on whole numpy arrays (a 1M-triangle mesh in a
fraction of a second; `from_pydata` is several times slower). Colours arrive linear (the
engine converts once), so they go straight into a FLOAT_COLOR point attribute `Col`,
made active (Solid mode "Attribute" colour, painting) and the render colour, and a
material's Base Color reads it. The object remembers its job and checkpoint as custom
properties, which is what Refine continues from.
"""
from __future__ import annotations

import json
import os
import zipfile

import bpy
import numpy as np
from mathutils import Matrix

from ..results import CHECKPOINT_FILE, JOB_FILE, LOG_FILE, MESH_FILE
from .errors import ArtistError

COLOR_ATTRIBUTE = "Col"


def load_arrays(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (V,3) f32, faces (F,3) i32, colours (V,4) f32) from a result, checked."""
    path = os.path.join(directory, MESH_FILE)
    if not os.path.isfile(path):
        raise ArtistError(f"No {MESH_FILE} in {directory}: pick a finished result folder (a run that stopped "
                          f"early has none; see {LOG_FILE} there)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("vertices", "faces", "colors") if name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtistError(f"{path} cannot be read ({exc}): the result is damaged; run the job again") from None
    missing = [n for n in ("vertices", "faces", "colors") if n not in arrays]
    if missing:
        raise ArtistError(f"{path} lacks {', '.join(missing)}: it was not written by this engine version")
    verts, faces, colors = arrays["vertices"], arrays["faces"], arrays["colors"]
    for name, arr, width in (("vertices", verts, 3), ("faces", faces, 3), ("colors", colors, 4)):
        if arr.ndim != 2 or arr.shape[1] != width:
            raise ArtistError(f"{path}: '{name}' must have shape (N, {width}), has {arr.shape}")
    if len(faces) == 0 or len(verts) == 0:
        raise ArtistError(f"{path} holds an empty mesh: nothing to import; try another seed or more steps")
    if len(colors) != len(verts):
        raise ArtistError(f"{path}: {len(colors)} colours for {len(verts)} vertices")
    if faces.min() < 0 or faces.max() >= len(verts):
        raise ArtistError(f"{path}: face indices outside 0..{len(verts) - 1}")
    return (np.ascontiguousarray(verts, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.int32),
            np.ascontiguousarray(colors, dtype=np.float32))


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
    attr = me.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    attr.data.foreach_set("color", colors.ravel())
    me.color_attributes.active_color = attr
    me.color_attributes.render_color_index = me.color_attributes.find(COLOR_ATTRIBUTE)
    if hasattr(me, "shade_smooth"):
        me.shade_smooth()  # marching-cubes facets read better smooth
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

    Reads and checks everything before creating any datablock, so a bad folder leaves the
    file as it was."""
    directory = os.path.abspath(bpy.path.abspath(directory))
    verts, faces, colors = load_arrays(directory)
    job_text = _read_text(os.path.join(directory, JOB_FILE))
    checkpoint = os.path.join(directory, CHECKPOINT_FILE)
    name = name or _name_from_job(job_text) or "SDS Result"

    me = build_mesh(name, verts, faces, colors)
    me.materials.append(build_material(f"SDS {name}", colors.mean(axis=0)))
    ob = bpy.data.objects.new(name, me)
    if matrix_world is not None:
        ob.matrix_world = Matrix(matrix_world)  # from rows (a plain nested list would be read as columns)
    ob["sds_result"] = directory
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


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def _name_from_job(job_text: str | None) -> str | None:
    try:
        prompt = json.loads(job_text)["prompt"].strip() if job_text else ""
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return prompt[:48] or None
