"""The yardstick: how close a result mesh is to the pocket world's truth.

- Chamfer: symmetric mean nearest-neighbour distance between area-uniform samples of the
  result's surface and of the true surface, as a fraction of the bounds size.
- Colour error: mean absolute difference, per channel, between the result's vertex colours
  (interpolated at its surface samples) and the true albedo, both linear RGB. A marked
  object's albedo varies over its surface, so each sample is compared with the nearest
  true surface sample's colour (mark where marked).
- R-precision, as DreamFusion measures it but with exact renders instead of CLIP: the
  result is rasterised from 8 fixed orbit views, textureless (grey, lit from the camera)
  for shape and flat albedo for colour, and every prompt of the world is ranked by the mean
  squared difference between its true renders (same views, same shading) and the result's.
  Shape is right when the best-ranked prompt has the result's shape; colour is right
  when the best-ranked prompt (by albedo renders) has the result's colour. A marked prompt
  is ranked among the plain ones by its body colour: the mark is a minority of the surface.
  Whether the mark sits where it should is janus.py's measure.
- Saturation and brightness: the mean HSV saturation S and value V of the result's albedo
  renders (the same 8 views) over its own covered pixels, beside the same means of the
  truth's analytic renders (the asset's own prompt, mark included) over the truth's pixels.
  SDS at high guidance over-saturates: colour error says a colour is off, these say which
  way. Over a bench they pool (`colour_fidelity`) as sums, so a white truth (S = 0) neither
  divides by zero nor weighs more than its pixels' saturation.
- Bumpiness (cube and pyramid only): the mean angle between neighbouring faces of the
  result that lie on a true flat face, in degrees (`flat_bumpiness`: shading noise at the
  mesh's scale), and their normals' mean angle from the region's own mean normal
  (`flat_deviation`: flatness at every scale).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..scene.colour import linear_to_srgb
from . import world
from .cameras import fixed_orbits
from .dataset import one_thread
from .raster import rasterise
from .shapes import Polyhedron

EVAL_AZIMUTHS = tuple(float(a) for a in range(0, 360, 45))
EVAL_ELEVATIONS = tuple(10.0 if k % 2 == 0 else 30.0 for k in range(8))
EVAL_DISTANCE = 1.6  # units of bounds size
EVAL_FOVY = 45.0
EVAL_SIZE = 64
SURFACE_SAMPLES = 30000
FLAT_NEAR = 0.03  # a result face lies on a true flat face within this distance of its plane (bounds sizes)
FLAT_MARGIN = 0.03  # ... and at least this far inside every other face's plane (away from edges and corners)
TEXTURELESS_AMBIENT, TEXTURELESS_DIFFUSE = 0.2, 0.8


def eval_orbit():
    return fixed_orbits(EVAL_AZIMUTHS, EVAL_ELEVATIONS, EVAL_DISTANCE, EVAL_FOVY)


# -- geometry and colour ---------------------------------------------------------------------

def _check_mesh(mesh: dict) -> tuple[np.ndarray, np.ndarray]:
    for key in ("vertices", "faces"):
        if key not in mesh:
            raise ValueError(f"mesh: missing {key!r} (have {sorted(mesh)})")
    v = np.asarray(mesh["vertices"], dtype=np.float64)
    f = np.asarray(mesh["faces"], dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"mesh: vertices must be (V,3) and faces (F,3), got {v.shape} and {f.shape}")
    if len(f) == 0:
        raise ValueError("mesh: has no faces, nothing to measure")
    return v, f


def sample_surface(mesh: dict, n: int = SURFACE_SAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """n area-uniform points on a mesh (n,3), with its vertex colours interpolated there (n,C) if it has any."""
    v, f = _check_mesh(mesh)
    rng = np.random.default_rng(seed)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if area.sum() <= 0:
        raise ValueError("mesh: all faces have zero area, nothing to measure")
    tri = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack((1 - s, s * (1 - r2), s * r2), 1)  # uniform barycentrics
    points = (w[:, :, None] * v[f[tri]]).sum(1)
    colours = None
    if mesh.get("colors") is not None:
        col = np.asarray(mesh["colors"], dtype=np.float64)
        colours = (w[:, :, None] * col[f[tri]]).sum(1)
    return points, colours


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance: the mean of both directions' mean nearest-neighbour distances."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d_ab = cKDTree(b).query(a)[0].mean()
    d_ba = cKDTree(a).query(b)[0].mean()
    return float(0.5 * (d_ab + d_ba))


def mesh_chamfer(mesh: dict, prompt: str, bounds: dict | None = None, n: int = SURFACE_SAMPLES) -> float:
    """Chamfer distance from a mesh to the prompt's true surface, as a fraction of the bounds size."""
    bounds = bounds or world.DEFAULT_BOUNDS
    points, _ = sample_surface(mesh, n, seed=1)
    truth = world.truth_points(prompt, n, bounds, seed=2)
    return chamfer(points, truth) / float(bounds["size"])


def colour_error(mesh: dict, prompt: str, n: int = SURFACE_SAMPLES, bounds: dict | None = None) -> float:
    """Mean absolute linear-RGB difference between a mesh's surface colour and the true albedo."""
    if mesh.get("colors") is None:
        raise ValueError("mesh: has no 'colors', cannot measure colour")
    points, colours = sample_surface(mesh, n, seed=3)
    if world.parse_object(prompt).mark is None:
        truth = world.truth_colour(prompt)[None]
    else:
        truth_at, truth_colours = world.truth_samples(prompt, n, bounds, seed=4)
        truth = truth_colours[cKDTree(truth_at).query(points)[1]]
    return float(np.abs(colours[:, :3] - truth).mean())


def flat_bumpiness(mesh: dict, prompt: str, bounds: dict | None = None) -> float:
    """Mean angle, in degrees, between the normals of neighbouring result faces (sharing an
    edge) that both lie on the same true flat face: the shading noise a smooth-shaded flat
    face shows. The prompt's shape must be a polyhedron (cube or pyramid).

    A face counts when its centroid is within FLAT_NEAR of a true face's plane and at least
    FLAT_MARGIN inside every other plane, so the rounded edges and corners of marching
    cubes and smoothing are not taken for bumps. It is 0 for any flat triangulation,
    whatever the face sizes. Bumps many faces wide tilt neighbours apart by little, so the
    figure is the roughness at the mesh's own scale: compare meshes of one resolution, and
    a broad bulge shows in `flat_deviation` and Chamfer, not here. NaN when no two
    neighbouring faces lie on a flat face.
    """
    f, unit, _, region = _flat_faces(mesh, prompt, bounds)
    edges = np.sort(np.concatenate((f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]])), axis=1)
    owner = np.tile(np.arange(len(f)), 3)
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    edges, owner = edges[order], owner[order]
    twin = (edges[1:] == edges[:-1]).all(1)  # an edge of a closed mesh appears once in each of its two faces
    a, b = owner[:-1][twin], owner[1:][twin]
    same = (region[a] >= 0) & (region[a] == region[b])
    if not same.any():
        return float("nan")
    cos = np.einsum("ij,ij->i", unit[a[same]], unit[b[same]])
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


def flat_deviation(mesh: dict, prompt: str, bounds: dict | None = None) -> float:
    """Area-weighted mean angle, in degrees, between the normals of the result's faces on a
    true flat face (as `flat_bumpiness` picks them) and that region's own mean normal: how far
    from flat the face is at every scale, broad bulges included (a region tilted or moved as
    a whole is Chamfer's business, not counted). NaN when no face lies on a flat face."""
    _, unit, area, region = _flat_faces(mesh, prompt, bounds)
    total, weight = 0.0, 0.0
    for k in np.unique(region[region >= 0]):
        here = region == k
        n, a = unit[here], area[here]
        mean = (a[:, None] * n).sum(0)
        mean /= max(np.linalg.norm(mean), 1e-300)
        total += float((a * np.degrees(np.arccos(np.clip(n @ mean, -1.0, 1.0)))).sum())
        weight += float(a.sum())
    return total / weight if weight > 0 else float("nan")


def _flat_faces(mesh: dict, prompt: str, bounds: dict | None):
    """(faces, unit normals turned to the outside of their true face, areas, true face index or -1 per face)."""
    shape = world.shape_of(prompt)
    if not isinstance(shape, Polyhedron):
        raise ValueError(f"{prompt!r} has no flat faces to measure (only the cube and the pyramid have)")
    v, f = _check_mesh(mesh)
    tri = world.to_unit(v, bounds)[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
    area = np.linalg.norm(cross, axis=1)
    unit = cross / np.maximum(area, 1e-300)[:, None]
    planes, offsets = shape.normals.numpy(), shape.offsets.numpy()
    signed = tri.mean(1) @ planes.T - offsets  # (F,K): > 0 outside plane k
    rows = np.arange(len(f))
    nearest = np.argmin(np.abs(signed), axis=1)
    others = signed.copy()
    others[rows, nearest] = -np.inf
    on_flat = (np.abs(signed[rows, nearest]) < FLAT_NEAR) & (others.max(1) < -FLAT_MARGIN) & (area > 0)
    # Outward, whatever the mesh's winding (the yardstick's renders are two-sided too); the
    # whole mesh turns at once, so a fold still reads as one.
    if (area * np.einsum("ij,ij->i", unit, planes[nearest]))[on_flat].sum() < 0:
        unit = -unit
    return f, unit, area, np.where(on_flat, nearest, -1)


# -- renders for R-precision ----------------------------------------------------------------

def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # area-weighted
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], face_n)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def mesh_renders(mesh: dict, bounds: dict | None = None, size: int = EVAL_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A mesh from the 8 eval views: textureless (8,1,S,S) and sRGB albedo (8,3,S,S), both over black."""
    grey, albedo, _ = mesh_views(mesh, bounds, size)
    return grey, albedo


def mesh_views(mesh: dict, bounds: dict | None = None, size: int = EVAL_SIZE,
               orbit=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A mesh from `orbit`'s cameras (default the eval views): textureless, sRGB albedo and coverage (N,S,S) bool."""
    v, f = _check_mesh(mesh)
    v = world.to_unit(v, bounds)
    colours = np.asarray(mesh["colors"], dtype=np.float64)[:, :3] if mesh.get("colors") is not None \
        else np.ones((len(v), 3))
    attributes = torch.from_numpy(np.concatenate((_vertex_normals(v, f), v, colours), 1))
    orbit = eval_orbit() if orbit is None else orbit
    c2w, focal, eyes = orbit.c2w(), orbit.focal(size), orbit.positions()
    grey = torch.zeros(len(orbit), 1, size, size)
    albedo = torch.zeros(len(orbit), 3, size, size)
    covered = torch.zeros(len(orbit), size, size, dtype=torch.bool)
    vt, ft = torch.from_numpy(v), torch.from_numpy(f)
    for k in range(len(orbit)):
        with one_thread():  # small element-wise ops: a second thread only spins on a busy box (25x slower)
            cover, attr = rasterise(vt, ft, attributes, c2w[k], float(focal[k]), size)
        normal = attr[..., 0:3] / attr[..., 0:3].norm(dim=-1, keepdim=True).clamp_min(1e-12)
        to_light = eyes[k] - attr[..., 3:6]
        to_light = to_light / to_light.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # Two-sided: a mesh's winding is not the truth's business.
        lit = TEXTURELESS_AMBIENT + TEXTURELESS_DIFFUSE * (normal * to_light).sum(-1).abs()
        grey[k, 0] = torch.where(cover, lit, torch.zeros_like(lit)).float()
        srgb = linear_to_srgb(attr[..., 6:9].clamp(0, 1))
        albedo[k] = (srgb * cover[..., None]).permute(2, 0, 1).float()
        covered[k] = cover
    return grey, albedo, covered


def _truth_textureless(shape: str, size: int) -> torch.Tensor:
    orbit = eval_orbit()
    rgba = world.render(shape, (1.0, 1.0, 1.0), orbit, size, "textureless", orbit.positions(), supersample=1,
                        ambient=TEXTURELESS_AMBIENT, diffuse=TEXTURELESS_DIFFUSE)
    return rgba[:, :1]


@lru_cache(maxsize=4)
def truth_renders(size: int = EVAL_SIZE) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
    """Every prompt's true renders from the eval views: (prompts, textureless (P,8,1,S,S), albedo (P,8,3,S,S))."""
    orbit = eval_orbit()
    with one_thread():
        grey = {s: _truth_textureless(s, size) for s in world.SHAPE_NAMES}
        masks = {s: world.render(s, (1.0, 1.0, 1.0), orbit, size, "albedo", supersample=1)[:, 3:4]
                 for s in world.SHAPE_NAMES}
    greys, albedos = [], []
    for prompt in world.PROMPTS:
        colour, shape = world.parse_prompt(prompt)
        greys.append(grey[shape])
        albedos.append(masks[shape] * torch.tensor(world.COLOURS[colour], dtype=torch.float32).view(1, 3, 1, 1))
    return world.PROMPTS, torch.stack(greys), torch.stack(albedos)


def _scores(grey: torch.Tensor, albedo: torch.Tensor, size: int) -> dict:
    prompts, grey_truth, albedo_truth = truth_renders(size)
    shape_score = ((grey_truth - grey[None]) ** 2).mean(dim=(1, 2, 3, 4))
    colour_score = ((albedo_truth - albedo[None]) ** 2).mean(dim=(1, 2, 3, 4))
    return {"prompts": prompts, "shape_score": shape_score.numpy(), "colour_score": colour_score.numpy()}


def _best(ranks: dict) -> tuple[str, str]:
    shape = world.parse_prompt(ranks["prompts"][int(np.argmin(ranks["shape_score"]))])[1]
    colour = world.parse_prompt(ranks["prompts"][int(np.argmin(ranks["colour_score"]))])[0]
    return shape, colour


def rank_prompts(mesh: dict, bounds: dict | None = None, size: int = EVAL_SIZE) -> dict:
    """Every prompt's distance to the mesh's renders, for shape (textureless) and colour (albedo)."""
    grey, albedo = mesh_renders(mesh, bounds, size)
    return _scores(grey, albedo, size)


def recognise(mesh: dict, bounds: dict | None = None, size: int = EVAL_SIZE) -> tuple[str, str]:
    """The (shape, colour) the yardstick reads in a mesh: the best prompt by each score."""
    return _best(rank_prompts(mesh, bounds, size))


# -- saturation and brightness ----------------------------------------------------------------

def saturation_value(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HSV saturation and value of sRGB colours (..., 3): S = (max - min) / max (0 where max = 0), V = max."""
    high, low = rgb.max(dim=-1).values, rgb.min(dim=-1).values
    return torch.where(high > 0, (high - low) / high.clamp_min(1e-12), torch.zeros_like(high)), high


def covered_saturation_value(albedo: torch.Tensor, cover: torch.Tensor) -> tuple[float, float]:
    """(mean S, mean V) of sRGB renders (N,3,S,S) over their covered pixels (N,S,S), all views pooled;
    NaN for both when nothing is covered."""
    if not bool(cover.any()):
        return float("nan"), float("nan")
    s, v = saturation_value(albedo.double().permute(0, 2, 3, 1)[cover])
    return float(s.mean()), float(v.mean())


@lru_cache(maxsize=256)
def truth_saturation_value(prompt: str, size: int = EVAL_SIZE) -> tuple[float, float]:
    """The truth's (mean S, mean V) over its own pixels in the same views: the prompt's own renders,
    mark included, one ray per pixel so every covered pixel holds a true albedo, not an edge blend."""
    with one_thread():
        rgba = world.render_prompt(prompt, eval_orbit(), size, "albedo", supersample=1)
    return covered_saturation_value(rgba[:, :3], rgba[:, 3] > 0.5)


def _colour_figures(albedo: torch.Tensor | None, cover: torch.Tensor, prompt: str) -> dict:
    truth_s, truth_v = truth_saturation_value(world.prompt_for(*world.parse_object(prompt)))
    s, v = (float("nan"), float("nan")) if albedo is None else covered_saturation_value(albedo, cover)
    return {"saturation": s, "truth_saturation": truth_s, "saturation_difference": s - truth_s,
            "brightness": v, "truth_brightness": truth_v, "brightness_difference": v - truth_v}


def colour_figures(mesh: dict, prompt: str, bounds: dict | None = None) -> dict:
    """saturation, truth_saturation, saturation_difference (result - truth) and the same three for
    brightness: one asset's mean S and V against its truth's, each over its own pixels."""
    if mesh.get("colors") is None:
        raise ValueError("mesh: has no 'colors', cannot measure saturation or brightness")
    _, albedo, cover = mesh_views(mesh, bounds)
    return _colour_figures(albedo, cover, prompt)


def judge(mesh: dict, prompt: str, bounds: dict | None = None) -> dict:
    """All figures for one result of `prompt` (plain or marked; the mark counts only in colour_error
    and the saturation and brightness figures)."""
    colour, shape = world.parse_prompt(prompt)
    grey, albedo, cover = mesh_views(mesh, bounds)  # one rasterisation for recognition and colour
    seen_shape, seen_colour = _best(_scores(grey, albedo, EVAL_SIZE))
    coloured = mesh.get("colors") is not None
    return {"prompt": prompt, "chamfer": mesh_chamfer(mesh, prompt, bounds),
            "colour_error": colour_error(mesh, prompt, bounds=bounds) if coloured else float("nan"),
            "seen_shape": seen_shape, "seen_colour": seen_colour,
            "shape_ok": seen_shape == shape, "colour_ok": seen_colour == colour,
            **_colour_figures(albedo if coloured else None, cover, prompt)}


def r_precision(judgements: list[dict]) -> tuple[float, float]:
    """(shape, colour) R-precision: the fraction of results whose own prompt ranked first."""
    if not judgements:
        return float("nan"), float("nan")
    return (sum(j["shape_ok"] for j in judgements) / len(judgements),
            sum(j["colour_ok"] for j in judgements) / len(judgements))


def _measured(value) -> bool:
    return value is not None and bool(np.isfinite(value))


def colour_fidelity(judgements: list[dict]) -> dict:
    """Pooled saturation_ratio and brightness_ratio: the sum over assets of the results' mean S
    (V) over the sum of their truths' (1.0 is faithful, above 1 over-saturated or too bright).

    Sums, not a mean of per-asset ratios: a white truth (S = 0) would divide by zero, and a
    near-grey one would turn a small tint into a huge ratio. Counted: the assets with both
    figures (a failed run or a mesh without colours has none). NaN when no asset counts or the
    counted truths sum to 0 (a bench of white objects only: read the differences instead).
    """
    def ratio(result_key: str, truth_key: str) -> float:
        pairs = [(j.get(result_key), j.get(truth_key)) for j in judgements]
        pairs = [(r, t) for r, t in pairs if _measured(r) and _measured(t)]
        truth = sum(t for _, t in pairs)
        return sum(r for r, _ in pairs) / truth if truth > 0 else float("nan")

    return {"saturation_ratio": ratio("saturation", "truth_saturation"),
            "brightness_ratio": ratio("brightness", "truth_brightness")}
