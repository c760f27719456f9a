"""Orbit cameras of the pocket world, written out from the job contract's conventions (docs/JOB.md).

Azimuth 0 looks from -Y towards +Y (Blender's Front view) and positive azimuth turns
counter-clockwise seen from above, so azimuth 90 looks from +X. A camera looks down its -Z
with +Y up (c2w columns: right, up, back, position); pixel intrinsics have their origin at
the top-left corner with y down. Positions are in units of the bounds size around the
bounds centre (the unit coordinates of `shapes.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# The engine's default orbit ranges (docs/JOB.md `cameras`).
ELEVATION = (-10.0, 45.0)
AZIMUTH = (-180.0, 180.0)
DISTANCE = (1.5, 2.0)
FOVY = (40.0, 70.0)


@dataclass
class Orbit:
    """A batch of orbit cameras in unit coordinates (bounds centred at 0, size 1)."""

    azimuth: torch.Tensor  # (N,) degrees
    elevation: torch.Tensor  # (N,) degrees
    distance: torch.Tensor  # (N,) units of bounds size
    fovy: torch.Tensor  # (N,) degrees

    def __len__(self) -> int:
        return int(self.azimuth.shape[0])

    def positions(self) -> torch.Tensor:
        az, el = torch.deg2rad(self.azimuth.double()), torch.deg2rad(self.elevation.double())
        d = self.distance.double()
        return torch.stack((d * el.cos() * az.sin(), -d * el.cos() * az.cos(), d * el.sin()), -1)

    def c2w(self) -> torch.Tensor:
        """(N,4,4) float64 camera-to-world, looking at the centre with world +Z up."""
        eye = self.positions()
        forward = -eye / eye.norm(dim=-1, keepdim=True)
        up_world = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(forward)
        right = torch.linalg.cross(forward, up_world)
        right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        up = torch.linalg.cross(right, forward)
        m = torch.eye(4, dtype=torch.float64).repeat(len(self), 1, 1)
        m[:, :3, 0], m[:, :3, 1], m[:, :3, 2], m[:, :3, 3] = right, up, -forward, eye
        return m

    def focal(self, height: int) -> torch.Tensor:
        """Focal length in pixels for an image `height` pixels tall (square pixels)."""
        return 0.5 * height / torch.tan(torch.deg2rad(self.fovy.double()) / 2)

    def subset(self, index) -> "Orbit":
        return Orbit(self.azimuth[index], self.elevation[index], self.distance[index], self.fovy[index])


def random_orbits(n: int, seed: int, elevation=ELEVATION, azimuth=AZIMUTH, distance=DISTANCE, fovy=FOVY) -> Orbit:
    """n cameras: azimuth stratified over its range (every direction gets its share), the rest uniform."""
    g = torch.Generator().manual_seed(int(seed))

    def uniform(lo, hi, u):
        return lo + (hi - lo) * u

    order = torch.randperm(n, generator=g)
    az = uniform(*azimuth, (order.double() + torch.rand(n, generator=g, dtype=torch.float64)) / n)
    el = uniform(*elevation, torch.rand(n, generator=g, dtype=torch.float64))
    dist = uniform(*distance, torch.rand(n, generator=g, dtype=torch.float64))
    fov = uniform(*fovy, torch.rand(n, generator=g, dtype=torch.float64))
    return Orbit(az, el, dist, fov)


def fixed_orbits(azimuths, elevations, distance: float, fovy: float) -> Orbit:
    az = torch.as_tensor(azimuths, dtype=torch.float64)
    el = torch.as_tensor(elevations, dtype=torch.float64).expand_as(az).clone()
    return Orbit(az, el, torch.full_like(az, float(distance)), torch.full_like(az, float(fovy)))


def pixel_rays(orbit: Orbit, size: int, supersample: int = 1, radius: float | None = None):
    """Rays through the pixel (sub-)centres of square images, S = size * supersample per side.

    Returns (pixel, origins, directions): `pixel` (R,) indexes the flattened (N,S,S) grid and
    origins/unit directions are (R,3) float64. With `radius`, only rays that can meet a
    sphere of that radius around the centre are made (the sphere projects to a centred
    disc), so a small object in a big frame costs only its own pixels.
    """
    s = size * supersample
    n = len(orbit)
    c2w = orbit.c2w()
    f = orbit.focal(size) * supersample  # (N,)
    centre = torch.arange(s, dtype=torch.float64) + 0.5 - s / 2
    if radius is None:
        keep = torch.ones(n, s, s, dtype=torch.bool)
    else:
        dist = orbit.distance.double()
        half_angle = torch.asin((radius / dist).clamp(max=1.0))
        disc = f * torch.tan(half_angle) + 1.5  # pixels, with a margin for rounding
        r2 = centre[:, None] ** 2 + centre[None, :] ** 2
        keep = r2[None] <= (disc**2)[:, None, None]
    img, row, col = keep.nonzero(as_tuple=True)
    x = centre[col] / f[img]
    y = -centre[row] / f[img]
    d_cam = torch.stack((x, y, -torch.ones_like(x)), -1)
    d = torch.einsum("rij,rj->ri", c2w[img, :3, :3], d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[img, :3, 3]
    pixel = (img * s + row) * s + col
    return pixel, o, d


def intrinsics(orbit: Orbit, size: int) -> dict[str, torch.Tensor]:
    """fx, fy, cx, cy in pixels for square images of `size` pixels (centred principal point)."""
    f = orbit.focal(size)
    c = torch.full_like(f, size / 2)
    return {"fx": f, "fy": f.clone(), "cx": c, "cy": c.clone()}

