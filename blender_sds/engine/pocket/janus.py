"""The Janus measure: does a result show its front mark where its back should be?

A marked object ("a red cube with a white front") has one front. A judge that cannot tell
a view of the front from one of the back asks for the front from every side, and the
result grows a front on its back too (the Janus problem: DreamFusion's many-faced heads).
The measure renders a result's flat albedo from 8 azimuths at one elevation and reads in
each view the share of covered pixels nearer the mark's colour than the body's. The mark
is *seen* when that share passes SEEN_SHARE. A result is Janus when the mark is seen from
any view within 45 degrees of the back, where the truth shows none of it
(world.MARK_HALF_ANGLE), and keeps its front when the mark is seen from the front.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage import measure

from . import world
from .cameras import fixed_orbits
from .dataset import one_thread
from .metrics import EVAL_DISTANCE, EVAL_FOVY, mesh_views
from .shapes import EXTENT

JANUS_AZIMUTHS = tuple(float(a) for a in range(0, 360, 45))
JANUS_ELEVATION = 15.0
JANUS_SIZE = 64
BACK_AZIMUTHS = (135.0, 180.0, 225.0)  # within 45 degrees of the back
FRONT_AZIMUTH = 0.0
# Measured on the truth: from the front the mark covers 0.35 (torus) to 1.0 (pyramid) of the
# object, from the back 0 (at most 0.001 on a marching-cubes mesh of it, where vertex colours
# blend along the mark's edge), and a two-faced copy shows 0.19 or more from the back. 0.05
# sits far below the first and far above the second.
SEEN_SHARE = 0.05


def janus_orbit():
    return fixed_orbits(JANUS_AZIMUTHS, [JANUS_ELEVATION] * len(JANUS_AZIMUTHS), EVAL_DISTANCE, EVAL_FOVY)


def _colours(prompt: str) -> tuple[np.ndarray, np.ndarray]:
    mark = world.mark_srgb(prompt)
    if mark is None:
        raise ValueError(f"janus: {prompt!r} has no front mark to look for; the measure needs a marked prompt "
                         f"(\"a <colour> <shape> with a <colour> front\")")
    return world.albedo_srgb(prompt), mark


def chroma(rgb: torch.Tensor) -> torch.Tensor:
    """Colours (...,3) as unit vectors: what is left of a colour when shading scales its brightness."""
    return rgb / rgb.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def mark_shares(albedo: torch.Tensor, cover: torch.Tensor, body, mark) -> list[float]:
    """Per view, the share of covered pixels whose sRGB (N,3,S,S) is nearer `mark` than `body` (sRGB (3,)).

    Nearer in chroma, not in RGB: results bake some of the teacher's lit renders into their
    albedo, so a white mark may come back grey; it is still the mark, not the red body
    (measured: a white front read as grey (0.45, 0.4, 0.4) is nearer red (0.85, 0.12, 0.1) in RGB).
    """
    rgb = chroma(albedo.double().permute(0, 2, 3, 1))
    mark, body = chroma(torch.as_tensor(mark, dtype=torch.float64)), chroma(torch.as_tensor(body, dtype=torch.float64))
    near_mark = (rgb - mark).norm(dim=-1) < (rgb - body).norm(dim=-1)
    counted = (near_mark & cover).flatten(1).sum(1).double()
    return (counted / cover.flatten(1).sum(1).clamp_min(1)).tolist()


def _figures(prompt: str, shares: list[float]) -> dict:
    seen = {a: s > SEEN_SHARE for a, s in zip(JANUS_AZIMUTHS, shares)}
    return {"prompt": prompt, "mark_share": shares, "janus": any(seen[a] for a in BACK_AZIMUTHS),
            "front_kept": seen[FRONT_AZIMUTH]}


def janus_figures(mesh: dict, prompt: str, bounds: dict | None = None) -> dict:
    """mark_share (8 floats by azimuth), janus (mark seen from the back) and front_kept (mark seen from the front).

    A plain prompt has no front to look for: ValueError.
    """
    body, mark = _colours(prompt)
    if mesh.get("colors") is None:
        raise ValueError("mesh: has no 'colors', cannot look for the front mark")
    _, albedo, cover = mesh_views(mesh, bounds, JANUS_SIZE, janus_orbit())
    return _figures(prompt, mark_shares(albedo, cover, body, mark))


def truth_figures(prompt: str) -> dict:
    """The measure on the analytic truth's renders: what a perfect result scores."""
    body, mark = _colours(prompt)
    with one_thread():
        rgba = world.render_prompt(prompt, janus_orbit(), JANUS_SIZE, "albedo", supersample=1)
    return _figures(prompt, mark_shares(rgba[:, :3], rgba[:, 3] > 0.5, body, mark))


def _rate(figures: list[dict], key: str) -> float:
    return sum(bool(f[key]) for f in figures) / len(figures) if figures else float("nan")


def janus_rate(figures: list[dict]) -> float:
    """The share of results that show their front mark from behind."""
    return _rate(figures, "janus")


def front_kept_rate(figures: list[dict]) -> float:
    """The share of results that show their front mark from the front."""
    return _rate(figures, "front_kept")


def truth_mesh(prompt: str, bounds: dict | None = None, resolution: int = 56, two_faced: bool = False) -> dict:
    """The truth as a result would be: a marching-cubes mesh with true linear vertex colours (calibration, tests).

    `two_faced` paints the mark mirrored onto the back as well: the Janus problem at its plainest.
    """
    shape = world.shape_of(prompt)
    axis = np.linspace(-EXTENT - 0.04, EXTENT + 0.04, resolution)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    level = shape.level(torch.from_numpy(grid)).numpy().reshape((resolution,) * 3)
    v, f, _, _ = measure.marching_cubes(level, 0.0, spacing=(axis[1] - axis[0],) * 3)
    v = v + axis[0]
    normals = shape.surface_normals(torch.from_numpy(v)).numpy()
    colours = world.surface_colour(prompt, v, normals)
    if two_faced:
        mirror = np.array([1.0, -1.0, 1.0])
        back = world.surface_colour(prompt, v * mirror, normals * mirror)
        colours = np.where(world.is_marked(v * mirror, normals * mirror)[:, None], back, colours)
    return {"vertices": world.to_world(v, bounds).astype(np.float32), "faces": f.astype(np.int32),
            "colors": np.concatenate((colours, np.ones((len(v), 1))), 1).astype(np.float32)}
