"""Ground-truth measures for tests: Chamfer distance and colour error against the known box."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from blender_sds import scenes


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(len(faces), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    t = tri[pick]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance (the average of both directions)."""
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def box_scores(mesh: dict, samples: int = 20000) -> dict:
    truth = scenes.surface_samples(samples)
    got = sample_mesh(mesh["vertices"], mesh["faces"], samples)
    # Colour: each vertex against the true albedo at its nearest true surface point.
    nearest = truth[cKDTree(truth).query(mesh["vertices"])[1]]
    true_linear = scenes.srgb_to_linear(scenes.albedo_srgb(nearest))
    colour_error = float(np.abs(mesh["colors"][:, :3] - true_linear).mean())
    return {"chamfer": chamfer(got, truth) / scenes.BOUNDS_SIZE, "colour_error": colour_error}
