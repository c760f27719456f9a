"""The artist's mesh going into a job (`init.mesh`, docs/JOB.md): an object's geometry as the
`.npz` the engine reads, and how Refine tells an edited generated mesh from an untouched one.

Two users, one reader (`geometry`):
- Generate with Start From = Active Mesh sends the active object's evaluated geometry
  (modifiers applied, what the viewport shows) in WORLD space: a blockout lives where the
  artist built it, and so does the result.
- Refine of an edited generated object sends its mesh in the object's LOCAL frame: a result
  is imported with its vertices in the job's units and carries its placement in matrix_world,
  so the local frame is the job's frame (the frame its bounds and its checkpoint live in).

The geometry is triangulated (loop triangles), vertices no triangle uses are dropped, and the
colour attribute (the active one, else the render one, else the first), from the point or
the corner domain, becomes one linear RGBA per vertex: corners are averaged per vertex, and
byte colours, which Blender stores as sRGB, come out linear through the attribute's `color`
(its `color_srgb` is the stored value), so the file holds linear floats either way.

The fingerprint is a hash of the vertex count, the face count and the coordinates rounded to
FINGERPRINT_DECIMALS decimals, stored on an imported object (FINGERPRINT_PROPERTY); a mesh
whose fingerprint differs has been edited (in Edit Mode, by a sculpt, by a modifier added
since). Moving, rotating or scaling the object is not an edit: Refine sees the object's own
frame. numpy and bpy only; no torch.
"""
from __future__ import annotations

import hashlib
import os

import bpy
import numpy as np
from bpy.app.handlers import persistent

from .errors import ArtistError

INIT_MESH_FILE = "init_mesh.npz"
FINGERPRINT_PROPERTY = "sds_fingerprint"
FINGERPRINT_DECIMALS = 5  # 10 micrometres at one unit a metre: an edit smaller than that is no edit
BOUNDS_MARGIN = 0.1  # of the mesh's largest extent, on each side, for bounds fitted around a mesh
# The engine accepts a start mesh that pokes this far (of bounds.size) out of the bounds
# (engine/scene/mesh_files.py BOUNDS_SLACK); the add-on asks for a little less.
INSIDE_SLACK = 5e-4


# -- fingerprint ---------------------------------------------------------------------------------

def _coordinates(me) -> np.ndarray:
    co = np.empty(len(me.vertices) * 3, dtype=np.float32)
    me.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def fingerprint(me) -> str:
    """A short hex digest of a mesh's vertex count, face count and rounded coordinates."""
    co = _coordinates(me).astype(np.float64)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.array([len(me.vertices), len(me.polygons)], dtype=np.int64).tobytes())
    digest.update(np.rint(co * 10.0 ** FINGERPRINT_DECIMALS).astype(np.int64).tobytes())
    return digest.hexdigest()


def current_fingerprint(ob, depsgraph) -> str:
    """The fingerprint of what `ob` shows now: modifiers applied, and in Edit Mode the edit
    mesh as it is (the evaluated mesh, not `ob.data`, which Edit Mode leaves stale)."""
    evaluated = ob.evaluated_get(depsgraph)
    me = evaluated.to_mesh()
    try:
        return fingerprint(me)
    finally:
        evaluated.to_mesh_clear()


# -- geometry ------------------------------------------------------------------------------------

def _color_attribute(me):
    attrs = me.color_attributes
    if not len(attrs):
        return None
    name = getattr(attrs, "active_color_name", "") or ""
    attr = attrs.get(name) if name else None
    if attr is None and 0 <= attrs.render_color_index < len(attrs):
        attr = attrs[attrs.render_color_index]
    return attr if attr is not None else attrs[0]


def _vertex_colors(me) -> np.ndarray | None:
    """(V,4) linear RGBA in 0..1 from the mesh's colour attribute, or None when it has none."""
    attr = _color_attribute(me)
    if attr is None or attr.domain not in ("POINT", "CORNER"):
        return None
    values = np.empty(len(attr.data) * 4, dtype=np.float32)
    attr.data.foreach_get("color", values)  # linear for FLOAT_COLOR and BYTE_COLOR alike
    values = values.reshape(-1, 4).astype(np.float64)
    n_verts = len(me.vertices)
    if attr.domain == "CORNER":
        corner_vertex = np.empty(len(me.loops), dtype=np.int32)
        me.loops.foreach_get("vertex_index", corner_vertex)
        counts = np.bincount(corner_vertex, minlength=n_verts).astype(np.float64)
        sums = np.stack([np.bincount(corner_vertex, weights=values[:, c], minlength=n_verts) for c in range(4)],
                        axis=1)
        values = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1.0)[:, None], 1.0)
    values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def geometry(ob, depsgraph, *, world: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(vertices (V,3) float32, faces (F,3) int32, colours (V,4) float32 or None) of what `ob`
    shows, triangulated, in world space or in its own frame. ArtistError when it is not a mesh
    or has no faces."""
    if ob.type != "MESH":
        raise ArtistError(f"'{ob.name}' is a {ob.type.lower()}, not a mesh: convert it (Object > Convert > Mesh), "
                          "or make a mesh object active")
    evaluated = ob.evaluated_get(depsgraph)
    me = evaluated.to_mesh()
    try:
        me.calc_loop_triangles()
        verts = _coordinates(me).astype(np.float64)
        tris = np.empty(len(me.loop_triangles) * 3, dtype=np.int32)
        me.loop_triangles.foreach_get("vertices", tris)
        tris = tris.reshape(-1, 3)
        colors = _vertex_colors(me)
        matrix = np.array(evaluated.matrix_world, dtype=np.float64)
    finally:
        evaluated.to_mesh_clear()
    if len(tris) == 0:
        raise ArtistError(f"The mesh of '{ob.name}' has no faces ({len(verts)} vertices): SDS starts from a surface; "
                          "add faces, or set Start From to Blob")
    if world:
        verts = verts @ matrix[:3, :3].T + matrix[:3, 3]
    if not np.isfinite(verts).all():
        raise ArtistError(f"The mesh of '{ob.name}' has vertices at infinity or NaN: fix or delete them")
    used, faces = np.unique(tris, return_inverse=True)  # drop vertices no triangle uses
    faces = faces.reshape(-1, 3).astype(np.int32)
    return verts[used].astype(np.float32), faces, None if colors is None else colors[used]


def write_npz(path: str, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray | None) -> str:
    """Write the start mesh (the layout of a result's mesh.npz) atomically; returns `path`."""
    arrays = {"vertices": np.ascontiguousarray(verts, dtype=np.float32),
              "faces": np.ascontiguousarray(faces, dtype=np.int32)}
    if colors is not None:
        arrays["colors"] = np.ascontiguousarray(colors, dtype=np.float32)
    tmp = path + ".part.npz"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise ArtistError(f"Cannot write the start mesh {path}: {exc.strerror or exc}") from None
    return path


# -- bounds --------------------------------------------------------------------------------------

def fitted_bounds(verts: np.ndarray, around: dict | None = None) -> dict:
    """A cube around the vertices with BOUNDS_MARGIN of their largest extent on each side (and
    around `around`'s box as well, when given)."""
    lo, hi = verts.min(axis=0).astype(np.float64), verts.max(axis=0).astype(np.float64)
    extent = float((hi - lo).max())
    lo, hi = lo - BOUNDS_MARGIN * extent, hi + BOUNDS_MARGIN * extent
    if around is not None:
        c, half = np.asarray(around["center"], dtype=np.float64), around["size"] / 2
        lo, hi = np.minimum(lo, c - half), np.maximum(hi, c + half)
    return {"center": [float(v) for v in (lo + hi) / 2], "size": float((hi - lo).max())}


def outside_by(verts: np.ndarray, bounds: dict) -> float:
    """How far (in units) the vertices reach past the bounds cube; 0 or less when inside."""
    c, half = np.asarray(bounds["center"], dtype=np.float64), bounds["size"] / 2
    return float((np.abs(verts.astype(np.float64) - c) - half).max()) if len(verts) else 0.0


def inside(verts: np.ndarray, bounds: dict) -> bool:
    return outside_by(verts, bounds) <= INSIDE_SLACK * bounds["size"]


# -- what Refine will do -------------------------------------------------------------------------

CHECKPOINT, MESH = "CHECKPOINT", "MESH"


def refine_plan(ob, depsgraph, source: str = "AUTO", fingerprint_now: str | None = None) -> tuple[str, str]:
    """(CHECKPOINT or MESH, a sentence for the artist): what Refine with `source` (AUTO,
    CHECKPOINT, MESH) does with the generated object `ob`. The one place this is decided: the
    panel shows its sentence, the operator acts on it. AUTO continues the checkpoint while the
    mesh is as imported (or when an older import carries no fingerprint), and starts from the
    mesh once it was edited, or when the checkpoint file is gone."""
    if source == CHECKPOINT:
        return CHECKPOINT, "Refine will continue the checkpoint"
    if source == MESH:
        return MESH, "Refine will start from the mesh as it is now"
    checkpoint = ob.get("sds_checkpoint")
    if not checkpoint or not os.path.isfile(checkpoint):
        return MESH, "Refine will start from the mesh (its checkpoint is gone)"
    stored = ob.get(FINGERPRINT_PROPERTY)
    if not stored or ob.type != "MESH":
        return CHECKPOINT, "Refine will continue the checkpoint"
    now = fingerprint_now if fingerprint_now is not None else current_fingerprint(ob, depsgraph)
    if now != stored:
        return MESH, "Refine will start from your edited mesh"
    return CHECKPOINT, "Refine will continue the checkpoint (the mesh is unchanged)"


# The panel redraws often; a fingerprint of a million-vertex mesh costs tens of milliseconds.
# It is kept per object until the depsgraph reports a geometry change (`note_updates`).
_cached: dict[str, tuple[int, str]] = {}
_serial = 0


@persistent
def note_updates(_scene=None, depsgraph=None) -> None:
    """depsgraph_update_post: any geometry change makes the cached fingerprints stale."""
    global _serial
    if depsgraph is None or any(u.is_updated_geometry for u in depsgraph.updates):
        _serial += 1


def cached_fingerprint(ob, depsgraph) -> str:
    key = ob.name_full
    hit = _cached.get(key)
    if hit is not None and hit[0] == _serial:
        return hit[1]
    value = current_fingerprint(ob, depsgraph)
    _cached[key] = (_serial, value)
    return value


def forget() -> None:
    _cached.clear()


def register():
    if note_updates not in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.append(note_updates)


def unregister():
    if note_updates in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.remove(note_updates)
    forget()
