"""Rough blockouts of the pocket shapes, as an artist would model them in a minute.

A blockout is a start, not the truth: its surface is jagged, its proportions are off, and
it is a polygon soup (every triangle with its own corners, so not watertight), which is
what the fit to `init.mesh` has to cope with. `bench blockout` starts runs from these.
"""
from __future__ import annotations

import numpy as np

from .shapes import EXTENT
from .world import to_world

PYRAMID_HALF, PYRAMID_HEIGHT = EXTENT * 14 / 15, 2 * EXTENT  # shapes.Pyramid's, in bounds sizes
APEX_SHIFT = 0.1  # of bounds.size, along x: the "apex off-centre by 10% of the bounds"
JAGGED = 0.04  # of the pyramid's height: each soup corner moved by up to this


def rough_pyramid(seed: int, bounds: dict | None = None, subdivisions: int = 3) -> dict:
    """{"vertices": (V,3) float32 world units of `bounds`, "faces": (F,3) int32}: a jagged
    pyramid soup with its apex shifted."""
    rng = np.random.default_rng(seed)
    h = PYRAMID_HEIGHT / 2
    apex = np.array([APEX_SHIFT, 0.0, h])
    base = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * PYRAMID_HALF
    base = np.column_stack([base, np.full(4, -h)])
    triangles = [(base[0], base[2], base[1]), (base[0], base[3], base[2])]  # the floor, facing down
    triangles += [(base[k], base[(k + 1) % 4], apex) for k in range(4)]
    soup = np.concatenate([_subdivide(np.array(t), subdivisions) for t in triangles])
    soup = soup + rng.uniform(-1, 1, soup.shape) * JAGGED * PYRAMID_HEIGHT
    vertices = to_world(soup.reshape(-1, 3), bounds).astype(np.float32)
    faces = np.arange(len(vertices), dtype=np.int32).reshape(-1, 3)
    return {"vertices": vertices, "faces": faces}


def _subdivide(triangle: np.ndarray, levels: int) -> np.ndarray:
    """(4^levels, 3, 3) triangles tiling one (3,3) triangle, with the same winding."""
    tris = triangle[None]
    for _ in range(levels):
        a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
        ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
        tris = np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    return tris
