"""A mesh as the field's target: what is inside it, how far from its surface, and its colour.

Artists' blockouts are rarely watertight (an open box, primitives pushed into each other),
so inside/outside comes from the generalised winding number (libigl's fast winding number,
Barill et al. 2018: a point is inside where it is above 1/2), which degrades gracefully
where ray parity flips whole rows. The answer is kept on a grid over the bounds, from
which the fit and `optim.keep_shape` read by trilinear interpolation: a winding number per
query would cost the mesh's size every step.

The density the fit aims at is the field's own convention (units of 1/bounds.size) with
the surface at `SURFACE_DENSITY`, the level the mesh extractor tries first, so the fitted
field is meshed where the artist's surface was.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .colour import linear_to_srgb

SURFACE_DENSITY = 10.0  # isosurface.AUTO_THRESHOLDS[0]
CORE_DENSITY = 200.0  # deep inside: opaque within a few render samples
PROFILE_CELLS = 1.5  # the density rises e-fold per this many cells inward
BAND_CELLS = 3  # cells either side of the surface where colour is taught
NEUTRAL_GREY = 0.5  # sRGB, where the mesh has no colours
CHUNK = 1 << 20


class MeshSolid:
    """Grids over the bounds box, indexed [x, y, z] like isosurface.density_grid."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, center, size: float,
                 resolution: int = 128):
        import igl  # the worker's dependency; imported here so the engine loads without it until needed

        self.center = np.asarray(center, dtype=np.float64)
        self.size = float(size)
        self.resolution = r = int(resolution)
        self.cell = self.size / r
        points = self.grid_points()
        winding = np.concatenate([igl.fast_winding_number(vertices, faces, chunk)
                                  for chunk in np.array_split(points, max(1, len(points) // CHUNK))])
        inside = (winding > 0.5).reshape(r, r, r)
        if not inside.any():
            raise ValueError("encloses no volume at this resolution (winding number below 1/2 everywhere in the "
                             "bounds): is it a single sheet, or far smaller than the bounds?")
        self.inside = inside
        # Signed distance in cells, positive inside; the surface lies midway between unlike cells.
        signed = np.where(inside, ndimage.distance_transform_edt(inside) - 0.5,
                          0.5 - ndimage.distance_transform_edt(~inside))
        self.signed_cells = signed.astype(np.float32)
        self.colors_given = colors is not None
        self.albedo_grid = self._albedo_grid(vertices, faces, colors, points, np.abs(signed) <= BAND_CELLS)
        self._tensors: dict = {}

    def grid_points(self) -> np.ndarray:
        """World positions of the cell centres, (R^3, 3) in [x, y, z] order."""
        r = self.resolution
        axis = (np.arange(r) + 0.5) * self.cell - self.size / 2
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        return grid + self.center

    def _albedo_grid(self, vertices, faces, colors, points, band) -> np.ndarray:
        r = self.resolution
        if colors is None:
            return np.full((r, r, r, 3), NEUTRAL_GREY, dtype=np.float32)
        import igl
        near = points[band.ravel()]
        _, face, closest = igl.point_mesh_squared_distance(near, vertices, faces)
        corners = vertices[faces[face]]  # (N,3,3)
        bary = _barycentric(closest, corners)
        linear = np.einsum("nk,nkc->nc", bary, colors[faces[face]])
        albedo = np.zeros((r, r, r, 3), dtype=np.float32)
        albedo[band] = linear_to_srgb(linear)
        # Every other cell takes its nearest band cell's colour: the field is never taught a seam.
        _, nearest = ndimage.distance_transform_edt(~band, return_indices=True)
        return albedo[tuple(nearest)]

    # -- what the fit and keep_shape read -----------------------------------------------------
    def _grid(self, name: str, device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._tensors:
            if name == "density":
                signed = torch.from_numpy(self.signed_cells)
                grid = (SURFACE_DENSITY * torch.exp(signed / PROFILE_CELLS)).clamp(max=CORE_DENSITY)[None]
            elif name == "inside":
                grid = torch.from_numpy(self.inside.astype(np.float32))[None]
            else:
                grid = torch.from_numpy(self.albedo_grid).permute(3, 0, 1, 2)
            self._tensors[key] = grid[None].to(device)  # (1, C, R, R, R)
        return self._tensors[key]

    def sample(self, name: str, points: torch.Tensor) -> torch.Tensor:
        """Trilinear read of grid `name` ("density", "inside", "albedo") at world points (N,3):
        (N,) or (N,3). Outside the box the border cells hold."""
        grid = self._grid(name, points.device)
        unit = (points - torch.as_tensor(self.center, dtype=points.dtype, device=points.device)) / (self.size / 2)
        # grid_sample reads (x, y, z) as (W, H, D): our [x, y, z] grid wants the coordinates reversed.
        out = F.grid_sample(grid, unit.flip(-1).view(1, -1, 1, 1, 3), mode="bilinear", padding_mode="border",
                            align_corners=False)
        out = out.view(grid.shape[1], -1).t()
        return out.squeeze(-1) if grid.shape[1] == 1 else out

    def near_surface(self, count: int, generator: torch.Generator, spread_cells: float = 2.0) -> torch.Tensor:
        """`count` world points scattered around the surface: where the fit and keep_shape matter."""
        if not hasattr(self, "_surface_cells"):
            boundary = np.abs(self.signed_cells) <= 0.5
            self._surface_cells = torch.from_numpy(np.argwhere(boundary).astype(np.float32))
        cells = self._surface_cells
        pick = torch.randint(len(cells), (count,), generator=generator)
        jitter = torch.randn(count, 3, generator=generator) * spread_cells
        offset = (cells[pick] + 0.5 + jitter) * self.cell - self.size / 2
        return offset + torch.as_tensor(self.center, dtype=torch.float32)

    @torch.no_grad()
    def coverage(self, views) -> torch.Tensor:
        """(B,1,H,W): 1 where a pixel's ray passes through the mesh's inside, 0 where it misses it,
        from the rays the renderer casts for `views` (its jitter included). Samples every half
        cell along each ray, so a part a cell thick is not stepped over."""
        from .cameras import ray_bundle
        from .renderer import ray_box

        origins, dirs = (x.reshape(-1, 3) for x in ray_bundle(views))
        center = torch.as_tensor(self.center, dtype=origins.dtype, device=origins.device)
        near, far = ray_box(origins, dirs, center, self.size)
        span = (far - near).clamp(min=0)
        samples = int(np.ceil(2 * np.sqrt(3) * self.resolution))
        covered = torch.zeros(len(origins), device=origins.device)
        steps = (torch.arange(samples, device=origins.device, dtype=origins.dtype) + 0.5) / samples
        for rows in torch.arange(len(origins), device=origins.device).split(max(1, CHUNK // samples)):
            t = near[rows, None] + span[rows, None] * steps
            points = origins[rows, None] + t[..., None] * dirs[rows, None]
            covered[rows] = self.sample("inside", points.reshape(-1, 3)).view(len(rows), samples).amax(-1)
        return (covered > 0.5).float().view(views.size, 1, views.height, views.width)

    def in_box(self, count: int, generator: torch.Generator) -> torch.Tensor:
        unit = torch.rand(count, 3, generator=generator) - 0.5
        return unit * self.size + torch.as_tensor(self.center, dtype=torch.float32)


def _barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of points on their triangles (degenerate ones: the first corner)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    den = d00 * d11 - d01 * d01
    ok = np.abs(den) > 1e-30
    safe = np.where(ok, den, 1.0)
    v = np.where(ok, (d11 * d20 - d01 * d21) / safe, 0.0)
    w = np.where(ok, (d00 * d21 - d01 * d20) / safe, 0.0)
    bary = np.stack([1 - v - w, v, w], 1)
    return bary.clip(0, 1) / bary.clip(0, 1).sum(1, keepdims=True).clip(min=1e-12)
