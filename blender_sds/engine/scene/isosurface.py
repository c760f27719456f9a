"""Field -> Blender-ready mesh: density grid, floater removal, marching cubes, smoothing and
decimation (remesh.py), vertex colours.

The field's density is in units of 1/bounds.size, so the thresholds here are scale-free.
An empty mesh is never returned: the wrong threshold is the most common export complaint of
the reference implementations (stable-dreamfusion #181/#268, threestudio #52), so "auto"
falls back through lower levels and a field with no surface raises `MeshError` that says
which levels were tried, how dense the field got, and what to change.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from scipy import ndimage
from skimage import measure

from . import remesh
from .colour import srgb_to_linear

AUTO_THRESHOLDS = (10.0, 5.0, 2.5)

# 26-connectivity: voxels touching only at an edge or corner may still be joined by the
# marching-cubes surface, so they count as one piece and are kept or dropped together.
_NEIGHBOURS = np.ones((3, 3, 3), dtype=bool)


class MeshError(RuntimeError):
    """The field has no surface at the threshold(s) asked for."""


COLOUR_DEPTH = 1.0  # cells inward from the surface at which vertex colours are read


def density_grid(density_fn, center, size, resolution, device, chunk=262144) -> torch.Tensor:
    """Sample density at the cell centres of a resolution^3 grid over the bounds box.

    Points are built chunk by chunk on `device` (a 1024^3 grid of points would not fit on a
    GPU); the result is an (R,R,R) float32 CPU tensor indexed [x, y, z].
    """
    center_t, size, resolution = _check_box(center, size, resolution)
    if not isinstance(chunk, Integral) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    device = torch.device(device)
    cell = size / resolution
    low = (center_t - size / 2 + cell / 2).float().to(device)
    total = resolution**3
    grid = torch.empty(total, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, total, chunk):
            flat = torch.arange(start, min(start + chunk, total), device=device)
            index = torch.stack(
                (flat // (resolution * resolution), (flat // resolution) % resolution, flat % resolution),
                dim=-1,
            )
            points = low + index.to(torch.float32) * cell
            grid[start : start + len(flat)] = _per_point(density_fn(points), len(flat), "density_fn", 1).cpu()
    if not torch.isfinite(grid).all():
        bad = int((~torch.isfinite(grid)).sum())
        raise MeshError(f"density_fn returned {bad} non-finite densities (NaN/inf): the field is broken, nothing to mesh")
    return grid.view(resolution, resolution, resolution)


def extract_mesh(
    density_fn,
    albedo_fn,
    center,
    size,
    resolution=128,
    threshold="auto",
    min_component=0.05,
    device="cpu",
    smooth=0,
    target_faces=0,
) -> dict:
    """Mesh the field's surface inside the bounds, with linear RGBA vertex colours.

    Returns {"vertices": float32 (V,3) world units, "faces": int32 (F,3) counter-clockwise seen
    from outside, "colors": float32 (V,4) linear RGBA, "threshold": the density level used}.

    The marched surface gets `smooth` Taubin steps, then is decimated to at most
    `target_faces` faces (0: neither; remesh.py), and only then are the colours read from
    the field, at the final vertices: a vertex that replaced many keeps the colour of where
    it now is, not an average of theirs.
    """
    levels = _check_threshold(threshold)
    smooth = remesh.check_count(smooth, "mesh.smooth")
    target_faces = remesh.check_count(target_faces, "mesh.target_faces")
    if isinstance(min_component, bool) or not isinstance(min_component, Real) or not 0 <= min_component <= 1:
        raise ValueError(f"mesh.min_component must be a number in [0, 1], got {min_component!r}")
    center_t, size, resolution = _check_box(center, size, resolution)
    grid = density_grid(density_fn, center_t, size, resolution, device).numpy()

    for level in levels:
        solid = _drop_floaters(grid > level, min_component)
        if solid is None:
            continue
        solid, marched = _fill_cavities(grid, solid, level)
        vertices, faces = _march(marched, solid, level)
        cell = size / resolution
        origin = center_t.numpy() - size / 2 + cell / 2
        world = np.ascontiguousarray(origin + vertices * cell, dtype=np.float32)
        world = remesh.smooth(world, faces, smooth)
        world, faces = remesh.decimate(world, faces, target_faces)
        return {
            "vertices": world,
            "faces": np.ascontiguousarray(faces, dtype=np.int32),
            "colors": _vertex_colours(albedo_fn, _inward(world, faces, COLOUR_DEPTH * cell), device),
            "threshold": float(level),
        }

    tried = ", ".join(f"{level:g}" for level in levels)
    peak = float(grid.max())
    hint = (
        f"set mesh.threshold below {peak:.3g} (e.g. {peak / 2:.3g}) or train longer"
        if peak > 0
        else "the field is empty: check the bounds and that the run trained"
    )
    raise MeshError(
        f"no surface at mesh.threshold {tried} (density found in the bounds: max {peak:.3g}); {hint}"
    )


def _drop_floaters(solid: np.ndarray, min_component: float) -> np.ndarray | None:
    """Keep pieces with at least min_component x the voxels of the largest; None if no voxel is solid."""
    labels, count = ndimage.label(solid, structure=_NEIGHBOURS)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.concatenate(([False], sizes >= min_component * sizes.max()))
    return keep[labels]


def _fill_cavities(grid: np.ndarray, solid: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Fill pockets sealed inside the object, so no inner shell ends up in the mesh.

    Views only ever see the outer surface: the inside of a trained field is arbitrary and
    its low-density pockets would become hidden surfaces an artist must clean by hand.
    """
    filled = ndimage.binary_fill_holes(solid)
    cavity = filled & ~solid
    if not cavity.any():
        return solid, grid
    return filled, np.where(cavity, np.float32(max(2 * level, float(grid.max()))), grid)


def _march(grid: np.ndarray, solid: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on the kept voxels; vertices in grid index units (cell centre i at i).

    Only the box around the kept voxels plus one ring of real neighbours is marched (the ring
    fixes where the surface is interpolated; marching less is most of the speed). Dropped
    floaters inside it are zeroed, and one empty cell on every side closes surfaces that
    touch the bounds, so the mesh is watertight.
    """
    first, last = _extent(solid)
    start = np.maximum(first - 1, 0)
    stop = np.minimum(last + 2, grid.shape)
    window = tuple(slice(a, b) for a, b in zip(start, stop))
    values = np.where(solid[window] | (grid[window] <= level), grid[window], 0.0)
    padded = np.pad(values.astype(np.float32, copy=False), 1)
    # "ascent" winds faces counter-clockwise seen from the low-density side: outward normals.
    vertices, faces, _, _ = measure.marching_cubes(padded, level=level, gradient_direction="ascent")
    return vertices.astype(np.float64) + (start - 1), faces


def _extent(solid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last solid index along each axis (without listing every solid voxel)."""
    first, last = [], []
    for axis in range(3):
        occupied = np.flatnonzero(solid.any(axis=tuple(a for a in range(3) if a != axis)))
        first.append(occupied[0])
        last.append(occupied[-1])
    return np.array(first), np.array(last)


def _inward(vertices: np.ndarray, faces: np.ndarray, depth: float) -> np.ndarray:
    """Vertices moved `depth` against their (area-weighted) normals.

    The level set lies where density is still rising; the colour the renders were judged
    on sits just inside it, while the albedo just outside was never trained.
    """
    tri = vertices[faces].astype(np.float64)
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
    normals = np.zeros_like(vertices, dtype=np.float64)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)
    return np.ascontiguousarray(vertices - depth * normals, dtype=np.float32)


def _vertex_colours(albedo_fn, vertices: np.ndarray, device, chunk: int = 262144) -> np.ndarray:
    """Albedo (sRGB) at each vertex -> linear RGBA with alpha 1, as Blender stores colours."""
    device = torch.device(device)
    colours = np.ones((len(vertices), 4), dtype=np.float32)
    points = torch.from_numpy(vertices)
    with torch.no_grad():
        for start in range(0, len(vertices), chunk):
            batch = points[start : start + chunk].to(device)
            srgb = _per_point(albedo_fn(batch), len(batch), "albedo_fn", 3).float()
            if not torch.isfinite(srgb).all():
                raise MeshError("albedo_fn returned non-finite colours (NaN/inf): the field is broken")
            colours[start : start + len(batch), :3] = srgb_to_linear(srgb).cpu().numpy()
    return colours


def _per_point(values, count: int, name: str, width: int) -> torch.Tensor:
    """Check a field query's output shape: (N,) for width 1 ((N,1) accepted), (N,width) else."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must return a torch tensor, got {type(values).__name__}")
    if width == 1 and values.shape in ((count,), (count, 1)):
        return values.reshape(count).float()
    if width > 1 and values.shape == (count, width):
        return values
    want = f"({count},)" if width == 1 else f"({count}, {width})"
    raise ValueError(f"{name} returned shape {tuple(values.shape)} for {count} points, expected {want}")


def _check_threshold(threshold) -> tuple[float, ...]:
    if threshold == "auto":
        return AUTO_THRESHOLDS
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(f'mesh.threshold must be "auto" or a number > 0, got {threshold!r}')
    return (float(threshold),)


def _check_box(center, size, resolution) -> tuple[torch.Tensor, float, int]:
    center_t = torch.as_tensor(center, dtype=torch.float64).detach().cpu().reshape(-1)
    if center_t.numel() != 3 or not torch.isfinite(center_t).all():
        raise ValueError(f"bounds.center must be 3 finite numbers, got {center!r}")
    if isinstance(size, bool) or not isinstance(size, Real) or not math.isfinite(size) or size <= 0:
        raise ValueError(f"bounds.size must be a finite number > 0, got {size!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, Integral) or resolution < 2:
        raise ValueError(f"mesh.resolution must be an integer >= 2, got {resolution!r}")
    return center_t, float(size), int(resolution)
