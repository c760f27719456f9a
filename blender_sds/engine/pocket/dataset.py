"""The pocket teacher's data: seeded renders of the world, made on demand and kept in memory.

Nothing is stored on disk: the same (prompt, size, count, seed) always renders the same
views, so a data set is a pure function of its key and a process-wide cache is safe. Each
view keeps its azimuth and elevation (view-dependent prompting picks data by direction)
and the sums the teacher's distance expansion needs, computed once here.

A marked object's views are drawn with its plain twin's cameras, lights and shadings, so
the mark is the only difference between the two sets. `front_bias` draws a set the way a
photo collection is drawn: more pictures of a thing's front than of its back.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..scene.directions import FRONT_DEG, direction_index
from . import world
from .cameras import Orbit, random_orbits

ALBEDO_FRACTION = 0.25  # share of flat-albedo views (the engine renders albedo this often)
COND_VIEWS = 384  # views of the prompt's object
WORLD_VIEWS_PER_OBJECT = 48  # views of every other object, for the unconditional set
REFERENCE_SIZE = 64  # the sizes above are for this resolution; larger images get fewer views


@dataclass
class ViewSet:
    """N premultiplied renders, flattened for the teacher's matrix products."""

    colour: torch.Tensor  # (N, 3*D) premultiplied sRGB, channel-major per image
    alpha: torch.Tensor  # (N, D)
    azimuth: torch.Tensor  # (N,) degrees
    elevation: torch.Tensor  # (N,) degrees
    direction: torch.Tensor  # (N,) long, index into scene.directions.DIRECTIONS
    framing: torch.Tensor  # (N,) log apparent size of the bounds (cameras.Orbit.framing)
    size: int
    colour_sq: torch.Tensor  # (N,) |P_i|^2
    colour_alpha: torch.Tensor  # (N,3) P_ic . A_i per channel
    alpha_sq: torch.Tensor  # (N,) |A_i|^2
    obj: torch.Tensor  # (N,) long, the view's object (world.object_index)
    log_prior: torch.Tensor  # (N,) log weight of each view in the data distribution (up to a constant)

    def __len__(self) -> int:
        return int(self.colour.shape[0])

    @staticmethod
    def from_rgba(rgba: torch.Tensor, orbit: Orbit, obj: int) -> "ViewSet":
        n, _, h, w = rgba.shape
        azimuth, elevation = orbit.azimuth.float(), orbit.elevation.float()
        colour = rgba[:, :3].reshape(n, 3 * h * w).float().contiguous()
        alpha = rgba[:, 3].reshape(n, h * w).float().contiguous()
        per_channel = colour.view(n, 3, h * w)
        return ViewSet(colour=colour, alpha=alpha, azimuth=azimuth, elevation=elevation,
                       direction=direction_index(azimuth, elevation), framing=orbit.framing().float(), size=h,
                       colour_sq=(colour.double() ** 2).sum(-1).float(),
                       colour_alpha=(per_channel.double() * alpha.double()[:, None]).sum(-1).float(),
                       alpha_sq=(alpha.double() ** 2).sum(-1).float(),
                       obj=torch.full((n,), obj, dtype=torch.long), log_prior=torch.zeros(n))

    def select(self, keep: torch.Tensor) -> "ViewSet":
        return ViewSet(**{k: (v[keep] if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()})

    def with_equal_object_prior(self) -> "ViewSet":
        """Every object gets the same total weight, however many views of it the set holds."""
        counts = torch.bincount(self.obj, minlength=int(self.obj.max()) + 1).float()
        moved = dict(self.__dict__, log_prior=-counts[self.obj].log())
        return ViewSet(**moved)

    def to(self, device) -> "ViewSet":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return ViewSet(**moved)

    @staticmethod
    def concat(sets: list["ViewSet"]) -> "ViewSet":
        return ViewSet(**{k: (torch.cat([getattr(s, k) for s in sets]) if k != "size" else sets[0].size)
                          for k in sets[0].__dict__})


def seed_of(*parts) -> int:
    """A stable seed from names and numbers (Python's hash() changes between runs)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def scaled_count(count: int, size: int, floor: int) -> int:
    """Fewer views for larger images, so memory and per-step cost stay near the 64 px figures."""
    if size <= REFERENCE_SIZE:
        return count
    return max(floor, round(count * (REFERENCE_SIZE / size) ** 2))


# The biased share is drawn among the front view's cameras (the same bucket as the ", front
# view" prompt), where the mark fills most of the object; the rest from every other azimuth.
# Spread over the whole front half instead (0.8 of the data), the mark's colour came back
# smeared at a quarter strength on every side, neither kept nor copied (docs/QUALITY.md "Janus").
FRONT_AZIMUTH = (-FRONT_DEG, FRONT_DEG)
BACK_AZIMUTH = (FRONT_DEG, 360.0 - FRONT_DEG)
BIAS_MARGIN = 2.0  # degrees kept clear of +-45, so the cameras' jitter cannot carry one into the other part


@lru_cache(maxsize=8)
def object_views(prompt: str, size: int, count: int = COND_VIEWS, seed: int = 0, supersample: int = 2,
                 front_bias: float | None = None) -> ViewSet:
    """`count` views of one prompt's object from random orbit cameras (engine default ranges), cached."""
    return render_views(prompt, size, count, seed, supersample, front_bias)


@contextmanager
def one_thread():
    """Rendering is many small element-wise ops: extra threads only spin (9x the CPU time on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def biased_orbits(count: int, front_bias: float | None, seed: int) -> Orbit:
    """Orbit cameras, `round(count * front_bias)` of them seeing the front (|azimuth| < 45), the rest elsewhere.

    A photo collection's front bias: people photograph a thing's front far more often than
    its back, and a model trained on such photos learns that bias. None draws over the
    whole circle, as the engine does (and as every set was drawn before the bias existed).
    """
    if front_bias is None:
        return random_orbits(count, seed)
    if not 0.0 <= front_bias <= 1.0:
        raise ValueError(f"front_bias: must be in [0, 1] or None, got {front_bias!r}")
    front_bias = float(front_bias)  # 1 and 1.0 draw the same cameras (and share a cache entry)
    front = round(count * front_bias)
    parts = [random_orbits(n, seed_of(seed, half, front_bias), azimuth=(lo + BIAS_MARGIN, hi - BIAS_MARGIN))
             for n, half, (lo, hi) in ((front, "front", FRONT_AZIMUTH), (count - front, "back", BACK_AZIMUTH))
             if n > 0]
    return Orbit(*(torch.cat([getattr(o, k) for o in parts]) for k in ("eye", "target", "up", "fovy")))


def render_views(prompt: str, size: int, count: int, seed: int = 0, supersample: int = 2,
                 front_bias: float | None = None) -> ViewSet:
    colour, shape, _ = world.parse_object(prompt)
    key = (colour, shape, size, count, seed)
    orbit = biased_orbits(count, front_bias, seed_of("cameras", *key))
    lights = world.random_lights(orbit, seed_of("lights", *key))
    g = torch.Generator().manual_seed(seed_of("shading", *key))
    flat = torch.rand(count, generator=g) < ALBEDO_FRACTION
    shading = ["albedo" if f else "lambertian" for f in flat.tolist()]
    with one_thread():
        rgba = world.render(shape, world.COLOURS[colour], orbit, size, shading, lights, supersample,
                            mark=world.mark_srgb(prompt))
        return ViewSet.from_rgba(rgba, orbit, world.object_index(prompt))


@lru_cache(maxsize=2)
def world_views(size: int, per_object: int = WORLD_VIEWS_PER_OBJECT, seed: int = 0, supersample: int = 2) -> ViewSet:
    """`per_object` views of every object of the world: the unconditional data."""
    return ViewSet.concat([render_views(p, size, per_object, seed_of("world", seed), supersample)
                           for p in world.PROMPTS])


def unconditional_views(cond: ViewSet, world_set: ViewSet) -> ViewSet:
    """The whole world with the prompt's own views taken from `cond`: p(x) is the mixture of every p(x|y).

    Sharing the prompt's views means that where a render already looks like the prompt's
    data both denoisers pick the same image and CFG has nothing to amplify; the object
    prior keeps the prompt's larger share of views from outweighing the rest of the world.
    """
    others = world_set.select(~torch.isin(world_set.obj, cond.obj.unique()))
    return ViewSet.concat([cond, others]).with_equal_object_prior()
