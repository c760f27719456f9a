"""Training cameras: random orbits around the bounds, the artist's rig, or a mix.

Everything is in Blender's world frame (Z up). A camera looks down its -Z axis with +Y
up (OpenGL/NeRF), and intrinsics are pixels with the origin at the top-left corner and y
down, exactly as docs/ARCHITECTURE.md "Conventions" defines them, so rig cameras from the add-on need no
conversion. Azimuth 0 is Blender's Front view (looking from -Y towards +Y).
"""
from __future__ import annotations

import math

import torch

from ..settings import CameraSettings
from .views import ViewBatch

WORLD_UP = (0.0, 0.0, 1.0)


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """(B,4,4) camera-to-world matrices for cameras at `eye` looking at `target`."""
    if up is None:
        up = _axis(eye, 2)  # WORLD_UP
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up, dim=-1)
    # Looking straight up or down: any horizontal right axis will do.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback = torch.linalg.cross(forward, _axis(eye, 1), dim=-1)
    right = torch.nn.functional.normalize(torch.where(degenerate, fallback, right), dim=-1)
    cam_up = torch.linalg.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def _axis(like: torch.Tensor, index: int) -> torch.Tensor:
    """A unit axis shaped like `like`, made on its device: a torch.tensor of constants in the
    step would be a blocking host-to-device copy on CUDA every time."""
    axis = torch.zeros_like(like)
    axis[..., index] = 1.0
    return axis


def orbit_position(center: torch.Tensor, azimuth_deg, elevation_deg, distance) -> torch.Tensor:
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=center.dtype, device=center.device))
    el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=center.dtype, device=center.device))
    d = torch.as_tensor(distance, dtype=center.dtype, device=center.device)
    offset = torch.stack([torch.sin(az) * torch.cos(el), -torch.cos(az) * torch.cos(el), torch.sin(el)], -1)
    return center + d.unsqueeze(-1) * offset


def angles_of(c2w: torch.Tensor, center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Azimuth and elevation (degrees) of camera positions seen from the bounds centre."""
    v = c2w[:, :3, 3] - center
    azimuth = torch.rad2deg(torch.atan2(v[:, 0], -v[:, 1]))
    elevation = torch.rad2deg(torch.atan2(v[:, 2], v[:, :2].norm(dim=-1)))
    return azimuth, elevation


def square_crop(camera: dict, resolution: int) -> tuple[float, float, float, float]:
    """Intrinsics of the centred square crop of a camera's frame, scaled to `resolution`.

    Training renders are square (the diffusion model's input is); a rig or reference
    camera with another aspect contributes the centre of its frame.
    """
    w, h = camera["width"], camera["height"]
    side = min(w, h)
    s = resolution / side
    return (camera["fx"] * s, camera["fy"] * s,
            (camera["cx"] - (w - side) / 2) * s, (camera["cy"] - (h - side) / 2) * s)


def crop_box(camera: dict) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) pixel box `square_crop` keeps, for cropping images alike."""
    w, h = camera["width"], camera["height"]
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def small_rotation(batch: int, degrees: float, generator: torch.Generator, device) -> torch.Tensor:
    """(B,3,3) rotations about random axes by N(0, degrees) angles (Rodrigues)."""
    axis = torch.nn.functional.normalize(torch.randn(batch, 3, generator=generator, device=device), dim=-1)
    angle = torch.deg2rad(torch.randn(batch, generator=generator, device=device) * degrees)
    k = torch.zeros(batch, 3, 3, device=device)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    eye = torch.eye(3, device=device).expand(batch, 3, 3)
    s, c = torch.sin(angle).view(-1, 1, 1), torch.cos(angle).view(-1, 1, 1)
    return eye + s * k + (1 - c) * (k @ k)


class CameraSampler:
    """Draws the cameras of each optimisation step from the job's `cameras` section."""

    def __init__(self, cfg: CameraSettings, device: torch.device, generator: torch.Generator,
                 rig: list[dict] | None = None, jitter: bool = True):
        self.cfg = cfg
        self.device = device
        self.generator = generator
        self.center = torch.tensor(cfg.bounds.center, dtype=torch.float32, device=device)
        self.world_up = torch.tensor(WORLD_UP, device=device)  # made once: no host copy per step
        self.size = float(cfg.bounds.size)
        self.resolution = int(cfg.resolution)
        self.rig = list(cfg.rig if rig is None else rig)
        self.jitter = jitter
        self.mode = cfg.mode
        if self.mode in ("rig", "mixed") and not self.rig:
            raise ValueError("cameras.rig: the rig is empty but cameras.mode needs it")
        if self.rig:
            self.rig_c2w = torch.tensor([c["c2w"] for c in self.rig], dtype=torch.float32, device=device)
            k = torch.tensor([square_crop(c, self.resolution) for c in self.rig], dtype=torch.float32,
                             device=device)
            self.rig_k = k

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator, device=self.device)

    def orbit(self, n: int) -> ViewBatch:
        cfg = self.cfg
        el_lo, el_hi = cfg.elevation
        # Half uniform in degrees, half uniform on the sphere (threestudio): enough low views
        # without starving the top.
        in_degrees = self._uniform(n, el_lo, el_hi)
        s_lo, s_hi = math.sin(math.radians(el_lo)), math.sin(math.radians(el_hi))
        on_sphere = torch.rad2deg(torch.asin(self._uniform(n, s_lo, s_hi).clamp(-1, 1)))
        pick = torch.rand(n, generator=self.generator, device=self.device) < 0.5
        elevation = torch.where(pick, in_degrees, on_sphere)
        az_lo, az_hi = cfg.azimuth
        strata = (torch.rand(n, generator=self.generator, device=self.device)
                  + torch.arange(n, device=self.device)) / n
        azimuth = az_lo + (az_hi - az_lo) * strata
        distance = self._uniform(n, *cfg.distance) * self.size
        fovy = self._uniform(n, *cfg.fovy)
        eye = orbit_position(self.center, azimuth, elevation, distance)
        target = self.center + cfg.jitter_target * self.size * torch.randn(
            n, 3, generator=self.generator, device=self.device)
        eye = eye + 0.02 * self.size * (2 * torch.rand(n, 3, generator=self.generator, device=self.device) - 1)
        up = self.world_up + 0.02 * torch.randn(n, 3, generator=self.generator, device=self.device)
        c2w = look_at(eye, target, up)
        focal = self.resolution / (2 * torch.tan(torch.deg2rad(fovy) / 2))
        half = torch.full((n,), self.resolution / 2, device=self.device)
        return self._batch(c2w, focal, focal, half, half, torch.full((n,), -1, device=self.device))

    def from_rig(self, n: int) -> ViewBatch:
        index = torch.randint(0, len(self.rig), (n,), generator=self.generator, device=self.device)
        c2w = self.rig_c2w[index].clone()
        if self.jitter:
            c2w[:, :3, 3] += self.cfg.jitter_position * self.size * torch.randn(n, 3, generator=self.generator,
                                                                                device=self.device)
            c2w[:, :3, :3] = small_rotation(n, self.cfg.jitter_rotation, self.generator, self.device) @ c2w[:, :3, :3]
        k = self.rig_k[index]
        return self._batch(c2w, k[:, 0], k[:, 1], k[:, 2], k[:, 3], index)

    def sample(self, n: int) -> ViewBatch:
        if self.mode == "orbit":
            return self.orbit(n)
        if self.mode == "rig":
            return self.from_rig(n)
        from_rig = torch.rand(n, generator=self.generator, device=self.device) < self.cfg.rig_fraction
        a, b = self.orbit(n), self.from_rig(n)
        m = from_rig
        return ViewBatch(
            c2w=torch.where(m.view(-1, 1, 1), b.c2w, a.c2w), fx=torch.where(m, b.fx, a.fx),
            fy=torch.where(m, b.fy, a.fy), cx=torch.where(m, b.cx, a.cx), cy=torch.where(m, b.cy, a.cy),
            width=self.resolution, height=self.resolution,
            azimuth=torch.where(m, b.azimuth, a.azimuth), elevation=torch.where(m, b.elevation, a.elevation),
            view_index=torch.where(m, b.view_index, a.view_index))

    def _batch(self, c2w, fx, fy, cx, cy, view_index) -> ViewBatch:
        azimuth, elevation = angles_of(c2w, self.center)
        return ViewBatch(c2w=c2w, fx=fx, fy=fy, cx=cx, cy=cy, width=self.resolution, height=self.resolution,
                         azimuth=azimuth, elevation=elevation, view_index=view_index.long())


def fixed_views(center, size: float, azimuths, elevation: float, resolution: int, fovy: float = 45.0,
                distance: float = 2.2, device="cpu") -> ViewBatch:
    """Deterministic orbit views (previews, metrics): the same cameras every time."""
    center = torch.as_tensor(center, dtype=torch.float32, device=device)
    az = torch.tensor(list(azimuths), dtype=torch.float32, device=device)
    n = az.shape[0]
    eye = orbit_position(center.expand(n, 3), az, torch.full((n,), float(elevation), device=device),
                         torch.full((n,), distance * size, device=device))
    c2w = look_at(eye, center.expand(n, 3))
    focal = torch.full((n,), resolution / (2 * math.tan(math.radians(fovy) / 2)), device=device)
    half = torch.full((n,), resolution / 2, device=device)
    azimuth, elevation_t = angles_of(c2w, center)
    return ViewBatch(c2w=c2w, fx=focal, fy=focal, cx=half, cy=half, width=resolution, height=resolution,
                     azimuth=azimuth, elevation=elevation_t, view_index=torch.full((n,), -1, device=device))


def ray_bundle(views: ViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origins and unit directions through pixel centres, (B,H,W,3) each."""
    device = views.c2w.device
    v, u = torch.meshgrid(torch.arange(views.height, device=device, dtype=torch.float32) + 0.5,
                          torch.arange(views.width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    x = (u[None] - views.cx.view(-1, 1, 1)) / views.fx.view(-1, 1, 1)
    y = -(v[None] - views.cy.view(-1, 1, 1)) / views.fy.view(-1, 1, 1)
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (B,H,W,3)
    rot = views.c2w[:, :3, :3]
    d_world = torch.einsum("bij,bhwj->bhwi", rot, d_cam)
    d_world = torch.nn.functional.normalize(d_world, dim=-1)
    origins = views.c2w[:, :3, 3].view(-1, 1, 1, 3).expand_as(d_world)
    return origins, d_world
