"""Empty-space skipping: a coarse grid of where the field has any density worth sampling.

Samples in cells known to be empty are never sent to the field, which is most of them
once the object has taken shape. The grid keeps a decaying maximum of the density seen
in each cell (nerfacc's rule: EMA 0.95, refreshed every 16 steps) so a cell that empties
out is dropped gradually and a growing object is never cut.
"""
from __future__ import annotations

import torch

from .field import Field


class OccupancyGrid:
    def __init__(self, center, size: float, resolution: int = 32, opacity_threshold: float = 0.01,
                 device="cpu", update_every: int = 16, decay: float = 0.95):
        self.center = torch.as_tensor(center, dtype=torch.float32, device=device)
        self.size = float(size)
        self.resolution = resolution
        self.opacity_threshold = opacity_threshold
        self.update_every = update_every
        self.decay = decay
        self.device = torch.device(device)
        self.density = torch.full((resolution,) * 3, float("inf"), device=device)  # everything occupied at first
        self.occupied = torch.ones((resolution,) * 3, dtype=torch.bool, device=device)

    def cell_of(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer cell coordinates and an inside-bounds mask for world points (..., 3)."""
        unit = (points - self.center) / self.size + 0.5
        inside = ((unit >= 0) & (unit <= 1)).all(-1)
        cell = (unit * self.resolution).long().clamp(0, self.resolution - 1)
        return cell, inside

    def lookup(self, points: torch.Tensor) -> torch.Tensor:
        cell, inside = self.cell_of(points)
        return inside & self.occupied[cell[..., 0], cell[..., 1], cell[..., 2]]

    @torch.no_grad()
    def update(self, field: Field, step: int, step_length: float, generator: torch.Generator | None = None,
               force: bool = False) -> None:
        """Refresh every `update_every` steps; `step_length` is one render step in units of bounds.size."""
        if not force and step % self.update_every != 0:
            return
        r = self.resolution
        idx = torch.stack(torch.meshgrid(*(torch.arange(r, device=self.device),) * 3, indexing="ij"), -1).view(-1, 3)
        jitter = torch.rand(idx.shape, generator=generator, device=self.device)
        points = ((idx + jitter) / r - 0.5) * self.size + self.center
        density = torch.cat([field.density(chunk) for chunk in points.split(65536)]).view(r, r, r)
        self.density = torch.maximum(torch.where(torch.isinf(self.density), density, self.density * self.decay),
                                     density)
        opacity = 1 - torch.exp(-self.density * step_length)
        occupied = opacity > self.opacity_threshold
        # One cell of margin: the grid is coarse and a surface may sit on a cell border.
        dilated = torch.nn.functional.max_pool3d(occupied[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        self.occupied = dilated

    @property
    def fraction(self) -> float:
        return float(self.occupied.float().mean())

    def state_dict(self) -> dict:
        return {"density": self.density.cpu(), "occupied": self.occupied.cpu(), "resolution": self.resolution}

    def load_state_dict(self, state: dict) -> None:
        if int(state["resolution"]) != self.resolution:
            raise ValueError("init.checkpoint: occupancy grid resolution differs from this engine's")
        self.density = state["density"].to(self.device)
        self.occupied = state["occupied"].to(self.device)
