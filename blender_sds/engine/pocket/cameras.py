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

from ...kinds.pocket import TARGET_JITTER  # noqa: F401  (a pocket job's orbit cameras draw it)

# The engine's default orbit ranges (docs/JOB.md `cameras`).
ELEVATION = (-10.0, 45.0)
AZIMUTH = (-180.0, 180.0)
DISTANCE = (1.5, 2.0)
FOVY = (40.0, 70.0)

EYE_JITTER = 0.02  # half-width of the uniform jitter of the camera position
UP_JITTER = 0.02  # std of the jitter of the up vector (a slight roll)


@dataclass
class Orbit:
    """A batch of cameras in unit coordinates (bounds centred at 0, size 1): eye, look-at target, up, fovy."""

    eye: torch.Tensor  # (N,3) float64
    target: torch.Tensor  # (N,3) float64
    up: torch.Tensor  # (N,3) float64, roughly +Z
    fovy: torch.Tensor  # (N,) degrees

    def __len__(self) -> int:
        return int(self.eye.shape[0])

    @property
    def distance(self) -> torch.Tensor:
        """(N,) distance of the camera from the bounds centre."""
        return self.eye.norm(dim=-1)

    @property
    def azimuth(self) -> torch.Tensor:
        """(N,) degrees of the camera around the centre, as the engine measures it."""
        return torch.rad2deg(torch.atan2(self.eye[:, 0], -self.eye[:, 1]))

    @property
    def elevation(self) -> torch.Tensor:
        return torch.rad2deg(torch.atan2(self.eye[:, 2], self.eye[:, :2].norm(dim=-1)))

    def positions(self) -> torch.Tensor:
        return self.eye

    def c2w(self) -> torch.Tensor:
        """(N,4,4) float64 camera-to-world: looking at `target`, `up` as the sky."""
        forward = self.target - self.eye
        forward = forward / forward.norm(dim=-1, keepdim=True)
        right = torch.linalg.cross(forward, self.up)
        right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        up = torch.linalg.cross(right, forward)
        m = torch.eye(4, dtype=torch.float64).repeat(len(self), 1, 1)
        m[:, :3, 0], m[:, :3, 1], m[:, :3, 2], m[:, :3, 3] = right, up, -forward, self.eye
        return m

    def focal(self, height: int) -> torch.Tensor:
        """Focal length in pixels for an image `height` pixels tall (square pixels)."""
        return 0.5 * height / torch.tan(torch.deg2rad(self.fovy.double()) / 2)

    def framing(self) -> torch.Tensor:
        """(N,) log of the bounds' apparent size: focal / image height / distance (all unit-free)."""
        return torch.log(self.focal(1) / self.distance)

    def subset(self, index) -> "Orbit":
        return Orbit(self.eye[index], self.target[index], self.up[index], self.fovy[index])


def orbit_eyes(azimuth, elevation, distance) -> torch.Tensor:
    az, el = torch.deg2rad(torch.as_tensor(azimuth).double()), torch.deg2rad(torch.as_tensor(elevation).double())
    d = torch.as_tensor(distance).double()
    return d[..., None] * torch.stack((el.cos() * az.sin(), -el.cos() * az.cos(), el.sin()), -1)


def random_orbits(n: int, seed: int, elevation=ELEVATION, azimuth=AZIMUTH, distance=DISTANCE, fovy=FOVY,
                  jitter: bool = True) -> Orbit:
    """n cameras drawn as the engine draws its orbit cameras.

    Azimuth stratified over its range (every direction gets its share); elevation half
    uniform in degrees, half uniform on the sphere; distance and fovy uniform; then the
    look-at point, position and up vector jittered, so the object is not always dead centre.
    """
    g = torch.Generator().manual_seed(int(seed))

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    order = torch.randperm(n, generator=g)
    az = azimuth[0] + (azimuth[1] - azimuth[0]) * (order.double() + rand(n)) / n
    lo, hi = (torch.deg2rad(torch.tensor(float(e), dtype=torch.float64)) for e in elevation)
    in_degrees = lo + (hi - lo) * rand(n)
    on_sphere = torch.asin(lo.sin() + (hi.sin() - lo.sin()) * rand(n))
    el = torch.rad2deg(torch.where(rand(n) < 0.5, in_degrees, on_sphere))
    dist = distance[0] + (distance[1] - distance[0]) * rand(n)
    fov = fovy[0] + (fovy[1] - fovy[0]) * rand(n)
    eye = orbit_eyes(az, el, dist)
    target = torch.zeros_like(eye)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).repeat(n, 1)
    if jitter:
        target = TARGET_JITTER * torch.randn(n, 3, generator=g, dtype=torch.float64)
        eye = eye + EYE_JITTER * (2 * rand(n, 3) - 1)
        up = up + UP_JITTER * torch.randn(n, 3, generator=g, dtype=torch.float64)
    return Orbit(eye, target, up, fov)


def fixed_orbits(azimuths, elevations, distance: float, fovy: float) -> Orbit:
    """Cameras looking straight at the centre from the given angles (previews, metrics, tests)."""
    az = torch.as_tensor(azimuths, dtype=torch.float64)
    el = torch.as_tensor(elevations, dtype=torch.float64).expand_as(az).clone()
    eye = orbit_eyes(az, el, torch.full_like(az, float(distance)))
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).repeat(len(az), 1)
    return Orbit(eye, torch.zeros_like(eye), up, torch.full_like(az, float(fovy)))


def pixel_rays(orbit: Orbit, size: int, supersample: int = 1, radius: float | None = None):
    """Rays through the pixel (sub-)centres of square images, S = size * supersample per side.

    Returns (pixel, origins, directions): `pixel` (R,) indexes the flattened (N,S,S) grid and
    origins/unit directions are (R,3) float64. With `radius`, only rays that can meet a
    sphere of that radius around the centre are made (the sphere projects to a disc around
    the centre's image), so a small object in a big frame costs only its own pixels.
    """
    s = size * supersample
    n = len(orbit)
    c2w = orbit.c2w()
    f = orbit.focal(size) * supersample  # (N,)
    centre = torch.arange(s, dtype=torch.float64) + 0.5 - s / 2
    if radius is None:
        keep = torch.ones(n, s, s, dtype=torch.bool)
    else:
        # The sphere projects to (nearly) a disc around the image of the centre; the
        # margin covers the slight ellipse of an off-axis sphere and pixel rounding.
        cam = torch.einsum("nji,nj->ni", c2w[:, :3, :3], -c2w[:, :3, 3])  # centre in camera coordinates
        u0, v0 = f * cam[:, 0] / -cam[:, 2], -f * cam[:, 1] / -cam[:, 2]
        half_angle = torch.asin((radius / orbit.distance).clamp(max=1.0))
        disc = 1.05 * f * torch.tan(half_angle) + 2.0
        r2 = (centre[None, None, :] - u0[:, None, None]) ** 2 + (centre[None, :, None] - v0[:, None, None]) ** 2
        keep = r2 <= (disc**2)[:, None, None]
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

