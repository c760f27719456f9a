"""The pocket world: six shapes x six colours, their prompts, their renders and their 3D truth.

The world is fixed, like a pretrained model: every object is centred on the bounds centre
in one canonical pose (axes along the world axes, flat bases down) and fits the middle 84%
of the bounds box (unit coordinates within [-EXTENT, EXTENT]^3, see `shapes.py`). Its images are
made by an analytic renderer (exact ray/primitive hits) that shares no code with the
engine's volume renderer, so the engine is measured against something it cannot fake.

Shading follows the engine's lit modes in form (not code): sRGB albedo times
`AMBIENT + DIFFUSE * max(0, n . l)` under a point light placed near the camera with
noise; a quarter of the teacher's views are flat albedo, because the engine renders flat
albedo for its first steps and a quarter of the time after. Renders are premultiplied
RGB + alpha, so any solid background can be composited later.

A marked object ("a red cube with a white front") wears its mark colour where its surface
faces the front (`is_marked`), so it has a front and a back, as the Janus problem needs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ...pocket_words import (COLOUR_NAMES, SHAPE_NAMES, PocketObject, PocketPromptError,  # noqa: F401 (re-exported)
                             parse_object, parse_prompt, prompt_for)
from ..scene.colour import srgb_to_linear
from .cameras import Orbit, pixel_rays
from .shapes import EXTENT, SHAPES, Shape

# sRGB albedo, saturated enough to tell apart and dark enough that light never clips them.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "yellow": (0.90, 0.80, 0.15),
    "white": (0.90, 0.90, 0.90),
    "purple": (0.55, 0.20, 0.75),
}
if tuple(COLOURS) != COLOUR_NAMES or tuple(SHAPES) != SHAPE_NAMES:
    raise ImportError("pocket world: the vocabulary (blender_sds/pocket_words.py) and the world disagree")
AMBIENT = 0.1
DIFFUSE = 0.9
LIGHT_NOISE = 0.5  # std of the light direction's jitter around the camera direction
LIGHT_DISTANCE = (0.8, 1.5)  # light distance, in units of the camera's distance
DEFAULT_BOUNDS = {"center": (0.0, 0.0, 0.0), "size": 2.0}
SHADINGS = ("lambertian", "albedo", "textureless")
BOUNDING_RADIUS = EXTENT * 3**0.5 + 1e-6  # every shape lies within [-EXTENT, EXTENT]^3

# The front mark: surface facing within MARK_HALF_ANGLE of the front (-Y, Blender's Front
# view) on the front half (p_y < 0, which keeps the torus's inner far side plain). At 40
# degrees every mark normal turns more than 90 degrees (135 - 40) away from any view within
# 45 degrees of the back, so those views see none of the true mark on any shape (janus.py
# measures exactly 0 from 15 degrees up), and a back view that shows it shows a copy.
MARK_HALF_ANGLE = 40.0
MARK_COS = math.cos(math.radians(MARK_HALF_ANGLE))

# The unconditional world is the plain objects; marked ones are indexed after them (`object_index`).
PROMPTS: tuple[str, ...] = tuple(prompt_for(c, s) for s in SHAPE_NAMES for c in COLOUR_NAMES)
MARKED_PROMPTS: tuple[str, ...] = tuple(prompt_for(c, s, m) for s in SHAPE_NAMES for c in COLOUR_NAMES
                                        for m in COLOUR_NAMES if m != c)


def object_index(prompt: str) -> int:
    """A ViewSet's `obj` for a prompt: PROMPTS.index for a plain one, len(PROMPTS) + k for a marked one."""
    canonical = prompt_for(*parse_object(prompt))
    if canonical in PROMPTS:
        return PROMPTS.index(canonical)
    return len(PROMPTS) + MARKED_PROMPTS.index(canonical)


def is_marked(points, normals):
    """Which surface points (..,3) in unit coordinates, with outward unit normals (..,3), wear the mark.

    One predicate for renders (torch), truth samples and meshes (numpy), so all agree on the mark.
    """
    return (-normals[..., 1] > MARK_COS) & (points[..., 1] < 0)


def shape_of(prompt: str) -> Shape:
    return SHAPES[parse_prompt(prompt)[1]]


def albedo_srgb(prompt: str) -> np.ndarray:
    return np.array(COLOURS[parse_prompt(prompt)[0]], dtype=np.float64)


def mark_srgb(prompt: str) -> np.ndarray | None:
    """The front mark's sRGB albedo (3,), or None for a plain prompt."""
    mark = parse_object(prompt).mark
    return None if mark is None else np.array(COLOURS[mark], dtype=np.float64)


def truth_colour(prompt: str) -> np.ndarray:
    """The object's (body) albedo in linear RGB (3,), as mesh vertex colours store it."""
    return np.asarray(srgb_to_linear(albedo_srgb(prompt)), dtype=np.float64)


def surface_colour(prompt: str, points_unit, normals) -> np.ndarray:
    """The true linear albedo (N,3) at surface points (unit coordinates) with outward normals: mark where marked."""
    body = truth_colour(prompt)
    colours = np.tile(body, (len(points_unit), 1))
    mark = mark_srgb(prompt)
    if mark is not None:
        marked = is_marked(np.asarray(points_unit), np.asarray(normals))
        colours[marked] = np.asarray(srgb_to_linear(mark), dtype=np.float64)
    return colours


def to_world(points_unit, bounds: dict | None = None) -> np.ndarray:
    bounds = bounds or DEFAULT_BOUNDS
    return np.asarray(bounds["center"], dtype=np.float64) + float(bounds["size"]) * np.asarray(points_unit)


def to_unit(points_world, bounds: dict | None = None) -> np.ndarray:
    bounds = bounds or DEFAULT_BOUNDS
    return (np.asarray(points_world, dtype=np.float64) - np.asarray(bounds["center"], dtype=np.float64)) / float(
        bounds["size"])


def truth_points(prompt: str, n: int, bounds: dict | None = None, seed: int = 0) -> np.ndarray:
    """n points (n,3) uniformly on the true surface by area, in world units of `bounds`."""
    g = torch.Generator().manual_seed(int(seed))
    return to_world(shape_of(prompt).sample(int(n), g).numpy(), bounds)


def truth_samples(prompt: str, n: int, bounds: dict | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points (n,3) world units, linear albedo (n,3)): `truth_points` with each point's true colour."""
    g = torch.Generator().manual_seed(int(seed))
    shape = shape_of(prompt)
    unit = shape.sample(int(n), g)
    colours = surface_colour(prompt, unit.numpy(), shape.surface_normals(unit).numpy())
    return to_world(unit.numpy(), bounds), colours


def random_lights(orbit: Orbit, seed: int) -> torch.Tensor:
    """Point lights (N,3) near each camera: direction jittered by LIGHT_NOISE, distance scaled."""
    g = torch.Generator().manual_seed(int(seed))
    eye = orbit.positions()
    dist = eye.norm(dim=-1, keepdim=True)
    direction = eye / dist + LIGHT_NOISE * torch.randn(eye.shape, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    lo, hi = LIGHT_DISTANCE
    scale = lo + (hi - lo) * torch.rand(dist.shape, generator=g, dtype=torch.float64)
    return direction * dist * scale


def render(shape: Shape | str, albedo, orbit: Orbit, size: int, shading="lambertian", lights=None,
           supersample: int = 2, chunk: int = 64, ambient: float = AMBIENT, diffuse: float = DIFFUSE,
           copies: int = 1, mark=None) -> torch.Tensor:
    """Premultiplied RGBA renders (N*copies,4,size,size) float32 of one object in unit coordinates.

    `albedo` is sRGB (3,), and `mark` the front mark's sRGB (3,) where `is_marked` (None:
    a plain object); `shading` is one name of SHADINGS or a list of one per render;
    `lights` (N*copies,3) point-light positions (unit coordinates) for lit renders. Each
    camera is rendered `copies` times in a row (render i*copies + c), each copy with its own
    shading and light, from one ray cast: the hits do not depend on the light. Each pixel
    averages supersample^2 rays, so edges are soft like a volume render's.
    """
    if isinstance(shape, str):
        shape = SHAPES[shape]
    n = len(orbit)
    total = n * copies
    modes = [shading] * total if isinstance(shading, str) else list(shading)
    if len(modes) != total or any(m not in SHADINGS for m in modes):
        raise ValueError(f"shading: one of {SHADINGS} per render, got {shading!r}")
    if lights is None and any(m != "albedo" for m in modes):
        raise ValueError("lights: lit shading needs a light position per render")
    albedo = torch.as_tensor(np.asarray(albedo, dtype=np.float32))
    mark = None if mark is None else torch.as_tensor(np.asarray(mark, dtype=np.float32))
    lit_code = torch.tensor([SHADINGS.index(m) for m in modes])
    lights = None if lights is None else lights.float()
    out = torch.empty(total, 4, size, size, dtype=torch.float32)
    s = size * supersample
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        idx = torch.arange(start, stop)
        pixel, o, d = pixel_rays(orbit.subset(idx), size, supersample, radius=BOUNDING_RADIUS)
        camera = idx[pixel // (s * s)]
        o, d = o.float(), d.float()
        t, normal = shape.intersect(o, d)
        hit = torch.isfinite(t)
        p = o + torch.where(hit, t, torch.zeros_like(t))[:, None] * d
        surface = albedo if mark is None else torch.where(is_marked(p, normal)[:, None], mark, albedo)
        for copy in range(copies):
            view = camera * copies + copy
            code = lit_code[view][:, None]
            if lights is not None:
                to_light = lights[view] - p
                to_light = to_light / to_light.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                lit = ambient + diffuse * (normal * to_light).sum(-1, keepdim=True).clamp_min(0)
            else:
                lit = torch.ones_like(t)[:, None]
            colour = torch.where(code == SHADINGS.index("textureless"), torch.ones_like(surface), surface)
            rgb = torch.where(code == SHADINGS.index("albedo"), surface.expand_as(p), lit * colour)
            rgba = torch.zeros((stop - start) * s * s, 4)
            rgba[pixel] = torch.cat((rgb * hit[:, None], hit[:, None].to(rgb)), -1)
            rgba = rgba.view(stop - start, size, supersample, size, supersample, 4).mean(dim=(2, 4))
            out[idx * copies + copy] = rgba.permute(0, 3, 1, 2)
    return out


def render_prompt(prompt: str, orbit: Orbit, size: int, shading="lambertian", lights=None,
                  supersample: int = 2) -> torch.Tensor:
    return render(shape_of(prompt), albedo_srgb(prompt), orbit, size, shading, lights, supersample,
                  mark=mark_srgb(prompt))


def composite(rgba: torch.Tensor, background) -> torch.Tensor:
    """Premultiplied (N,4,H,W) over a solid sRGB background (3,) or (N,3) -> (N,3,H,W)."""
    bg = torch.as_tensor(background, dtype=rgba.dtype).reshape(-1, 3, 1, 1)
    return rgba[:, :3] + (1 - rgba[:, 3:4]) * bg
