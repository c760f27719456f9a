"""Volume rendering of the field, with the shading augmentation SDS needs.

Renders are composited over a background the caller chooses, because a background that
can learn freely swallows the object (stable-dreamfusion #240): the optimiser passes a
random solid colour half of the time, and always when the judge must know it.
Shading modes: `albedo` (flat colour), `lambertian` (colour lit by a light near the
camera) and `textureless` (grey, lit): the last two make geometry, not paint, carry the
shape (DreamFusion).

Lit renders are shaded deferred: one normal per ray, at the ray's expected surface point
(the weight-averaged sample), not one per sample. Normals cost four field evaluations
each, and per sample they were most of a lit step (a pocket cube ran 2.3x faster on one
CPU thread without them) while samples in front of and behind an opaque surface carry no
weight. For opaque surfaces, which the `opaque` loss and SDS itself push towards, the two
agree; the orientation loss is weighted per ray by opacity instead of per sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field

import torch
import torch.nn as nn

from .cameras import ray_bundle
from .field import Field
from .occupancy import OccupancyGrid
from .views import ViewBatch

AMBIENT = 0.1
DIFFUSE = 0.9
SHADINGS = ("albedo", "lambertian", "textureless")


@dataclass
class Render:
    image: torch.Tensor  # (B,3,H,W) sRGB in [0,1], composited on the background
    opacity: torch.Tensor  # (B,1,H,W)
    foreground: torch.Tensor  # (B,3,H,W) premultiplied colour, before the background
    regularisers: dict = dc_field(default_factory=dict)  # scalar tensors: orientation, sparsity, opaque
    figures: dict = dc_field(default_factory=dict)
    # With render(split=True): (density's, colour's) images, each equal to `image`, whose gradients
    # reach only the density (colour and background held still) or only the colour and background.
    split: tuple[torch.Tensor, torch.Tensor] | None = None


class Background(nn.Module):
    """A colour per view direction, small so it cannot paint an object on its own."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, directions: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(directions))


def ray_box(origins: torch.Tensor, directions: torch.Tensor, center: torch.Tensor, size: float):
    """Entry and exit distances of rays through the bounds cube; exit <= entry means a miss."""
    lo, hi = center - size / 2, center + size / 2
    inv = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def render(field: Field, views: ViewBatch, samples: int, *, occupancy: OccupancyGrid | None = None,
           shading: str = "albedo", light: torch.Tensor | None = None,
           background: torch.Tensor | nn.Module | None = None, generator: torch.Generator | None = None,
           stratified: bool = True, want_orientation: bool = False, split: bool = False) -> Render:
    """Render `views`; `background` is (B,3) solid colours, a Background module, or None (black).
    `split`: also the density's and the colour's images (Render.split), so that a judge can give
    each its own gradient from one pass of the field."""
    if shading not in SHADINGS:
        raise ValueError(f"shading must be one of {SHADINGS}, got {shading!r}")
    b, h, w = views.size, views.height, views.width
    origins, dirs = ray_bundle(views)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    n = origins.shape[0]
    near, far = ray_box(origins, dirs, field.center, field.size)
    hit = far > near
    span = torch.where(hit, far - near, torch.zeros_like(far))
    steps = torch.arange(samples, device=origins.device, dtype=origins.dtype)
    offset = (torch.rand(n, samples, generator=generator, device=origins.device) if stratified
              else torch.full((n, samples), 0.5, device=origins.device))
    t = near.unsqueeze(-1) + span.unsqueeze(-1) * (steps + offset) / samples
    delta = (span / samples / field.size).unsqueeze(-1).expand(n, samples)  # in units of bounds.size
    points = origins.unsqueeze(1) + t.unsqueeze(-1) * dirs.unsqueeze(1)  # (N,S,3)

    active = hit.unsqueeze(-1).expand(n, samples)
    if occupancy is not None:
        active = active & occupancy.lookup(points)
    flat = active.reshape(-1).nonzero().squeeze(-1)
    p = points.reshape(-1, 3)[flat]
    need_normals = shading != "albedo" or want_orientation
    density_a, albedo_a = field(p)
    sigma = torch.zeros(n * samples, device=p.device, dtype=density_a.dtype).index_put((flat,), density_a)
    alpha = 1 - torch.exp(-sigma.view(n, samples) * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], dim=-1), dim=-1)[:, :-1]
    weights = alpha * trans  # (N,S)
    wa = weights.reshape(-1)[flat]

    ray_of = flat // samples
    opacity = weights.sum(-1, keepdim=True)
    if need_normals:
        # Deferred shading (see the module's docstring): one normal per ray, where its weight lies.
        weighted = torch.zeros(n, 3, device=p.device, dtype=p.dtype).index_add(0, ray_of, wa.detach().unsqueeze(-1) * p)
        surface = weighted / opacity.detach().clamp(min=1e-6)
        normals_r = field.normals(surface)
    lit = None
    if shading != "albedo":
        if light is None:
            raise ValueError("lit shading needs a light position")
        light_r = light.repeat_interleave(h * w, 0)
        light_dir = torch.nn.functional.normalize(light_r - surface, dim=-1)
        lit = AMBIENT + DIFFUSE * (normals_r * light_dir).sum(-1, keepdim=True).clamp(min=0)

    def shaded(wa, albedo_a, opacity, lit):
        if shading == "textureless":
            return (opacity * lit).expand(-1, 3)
        albedo_rgb = torch.zeros(n, 3, device=p.device, dtype=albedo_a.dtype).index_add(0, ray_of,
                                                                                     wa.unsqueeze(-1) * albedo_a)
        return albedo_rgb if lit is None else albedo_rgb * lit

    if background is None:
        bg = torch.zeros(n, 3, device=p.device)
    elif isinstance(background, nn.Module):
        bg = background(dirs)
    else:
        bg = background.view(b, 1, 3).expand(b, h * w, 3).reshape(n, 3)
    rgb = shaded(wa, albedo_a, opacity, lit)
    image = rgb + (1 - opacity) * bg

    def to_image(x):
        return x.view(b, h, w, -1).permute(0, 3, 1, 2)

    halves = None
    if split:  # the image twice more: colour and background held still, then weights and light
        density = shaded(wa, albedo_a.detach(), opacity, lit) + (1 - opacity) * bg.detach()
        still = opacity.detach()
        colour = shaded(wa.detach(), albedo_a, still, None if lit is None else lit.detach()) + (1 - still) * bg
        halves = (to_image(density), to_image(colour))

    regularisers = {
        "sparsity": torch.sqrt(opacity ** 2 + 0.01).mean(),
        "opaque": -(opacity.clamp(1e-3, 1 - 1e-3) * torch.log(opacity.clamp(1e-3, 1 - 1e-3))
                    + (1 - opacity.clamp(1e-3, 1 - 1e-3)) * torch.log(1 - opacity.clamp(1e-3, 1 - 1e-3))).mean(),
    }
    if want_orientation:
        facing = (normals_r * dirs).sum(-1).clamp(min=0) ** 2
        rays_hit = (opacity > 0).sum().clamp(min=1)
        regularisers["orientation"] = (opacity.detach().squeeze(-1) * facing).sum() / rays_hit
    figures = {"samples_evaluated": flat.numel()}  # known on the host since the compaction
    return Render(image=to_image(image), opacity=to_image(opacity), foreground=to_image(rgb),
                  regularisers=regularisers, figures=figures, split=halves)
