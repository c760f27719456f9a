"""Reading the mesh a job starts from (`init.mesh`), checked before anything is fitted to it.

Our own `.npz` (the layout of a result's mesh.npz, which is also what the add-on writes) is
read with numpy and no pickle; every other format goes through trimesh. Whatever the
format, the mesh comes back as plain arrays or a JobError that names `init.mesh` and what
is wrong with it, so an artist's broken export is a message, never a traceback.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

from ...job import JobError
from .colour import srgb_to_linear

KEY = "init.mesh"
MAX_FACES = 20_000_000  # an artist's sculpt may be millions; past this the fit's winding numbers take minutes
BOUNDS_SLACK = 1e-3  # of bounds.size: a blockout snapped to the box's faces is still inside


@dataclass(frozen=True)
class StartMesh:
    vertices: np.ndarray  # (V,3) float64, world units
    faces: np.ndarray  # (F,3) int64
    colors: np.ndarray | None  # (V,3) linear RGB in [0,1], or None: the fit paints it neutral grey


def load_start_mesh(path: str, center, size: float) -> StartMesh:
    """The mesh at `path`, triangulated, finite, indexed correctly and inside the bounds box."""
    name = os.path.basename(path)
    if path.lower().endswith(".npz"):
        vertices, faces, colors = _read_npz(path, name)
    else:
        vertices, faces, colors = _read_with_trimesh(path, name)
    vertices, faces, colors = _checked(vertices, faces, colors, name)
    _inside(vertices, np.asarray(center, dtype=np.float64), float(size), name)
    return StartMesh(vertices, faces, colors)


def _read_npz(path: str, name: str):
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle
        raise JobError(KEY, f"{name} is not a readable .npz (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("vertices", "faces") if k not in data.files]
            if missing:
                raise JobError(KEY, f"{name} has no {' or '.join(missing)} array (it has: "
                                    f"{', '.join(data.files) or 'nothing'})")
            return data["vertices"], data["faces"], data["colors"] if "colors" in data.files else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise JobError(KEY, f"{name} is not a readable .npz ({exc})") from None
    except ValueError as exc:  # an object array: refused, never unpickled
        raise JobError(KEY, f"{name}: {exc}") from None


def _read_with_trimesh(path: str, name: str):
    import trimesh
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises what its many parsers raise
        raise JobError(KEY, f"{name} could not be read as a mesh ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, trimesh.Trimesh):
        raise JobError(KEY, f"{name} holds no triangle mesh (got {type(loaded).__name__})")
    colors = None
    visual = loaded.visual
    if getattr(visual, "kind", None) == "vertex":
        colors = srgb_to_linear(np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0)  # sRGB bytes
    return np.asarray(loaded.vertices), np.asarray(loaded.faces), colors


def _checked(vertices, faces, colors, name: str):
    vertices, faces = np.asarray(vertices), np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.issubdtype(vertices.dtype, np.number):
        raise JobError(KEY, f"{name}: vertices must be a (V, 3) number array, got shape {vertices.shape} "
                            f"{vertices.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise JobError(KEY, f"{name}: faces must be a (F, 3) integer array (triangles), got shape {faces.shape} "
                            f"{faces.dtype}")
    if len(faces) == 0:
        raise JobError(KEY, f"{name} has no faces: there is no shape to start from")
    if len(faces) > MAX_FACES:
        raise JobError(KEY, f"{name} has {len(faces):,} faces, over {MAX_FACES:,}: decimate it first")
    vertices = vertices.astype(np.float64)
    if not np.isfinite(vertices).all():
        raise JobError(KEY, f"{name}: {int((~np.isfinite(vertices)).any(1).sum())} vertices are NaN or infinite")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise JobError(KEY, f"{name}: faces index vertices {int(faces.min())} .. {int(faces.max())}, but there are "
                            f"{len(vertices)} vertices")
    if colors is not None:
        colors = np.asarray(colors)
        if colors.ndim != 2 or colors.shape[0] != len(vertices) or colors.shape[1] not in (3, 4) \
                or not np.issubdtype(colors.dtype, np.number):
            raise JobError(KEY, f"{name}: colors must be (V, 3) or (V, 4) numbers for its {len(vertices)} "
                                f"vertices, got shape {colors.shape}")
        colors = colors[:, :3].astype(np.float64)
        if not np.isfinite(colors).all():
            raise JobError(KEY, f"{name}: colors hold NaN or infinite values")
        colors = colors.clip(0.0, 1.0)
    return vertices, faces.astype(np.int64), colors


def _inside(vertices: np.ndarray, center: np.ndarray, size: float, name: str) -> None:
    reach = np.abs(vertices - center).max(0)  # per axis, from the box's centre
    limit = size / 2 * (1 + BOUNDS_SLACK)
    if (reach > limit).any():
        axis = int(np.argmax(reach - limit))
        raise JobError(KEY, f"{name} reaches {reach[axis]:.4g} from the bounds' centre along {'xyz'[axis]}, but the "
                            f"bounds (size {size:.4g}) reach {size / 2:.4g}: enlarge bounds.size or move the mesh")
