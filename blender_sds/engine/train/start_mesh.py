"""Starting from the artist's mesh: the field fitted to it, then kept near it while the judge works.

The fit is supervised and short (Adam on the field's own parameter groups, at points
scattered over the box and around the surface), so score distillation starts from the
blockout's shape and colours instead of a density blob. `KeepShape` is the loss of
`optim.keep_shape`: binary cross-entropy between the field's occupancy and the mesh's, at
points around the mesh's surface, weighted constant or falling to zero over the run. It
reads the mesh's grid, not the mesh, so it costs one small field query a step.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..scene.field import Field
from ..scene.mesh_files import load_start_mesh
from ..scene.solid import SURFACE_DENSITY, MeshSolid
from ...job import JobError

FIT_STEPS = 200  # ~10 s on one CPU core; IoU ~0.95 (the disagreement is the cells the surface crosses),
# as at 300 and 400 steps; colour error 0.01-0.02 (0.01 at 300)
FIT_BATCH = 4096
FIT_LR = 0.03
KEEP_BATCH = 1024  # a pocket step renders ~20k points: this adds a few percent
OCCUPANCY_SHARPNESS = 2.0  # logistic slope in log-density: 1/2 at the surface level, ~0.9 at three times it


def load_solid(path: str, center, size: float) -> MeshSolid:
    """init.mesh read, checked and turned into its grids; every problem names init.mesh."""
    mesh = load_start_mesh(path, center, size)
    try:
        return MeshSolid(mesh.vertices, mesh.faces, mesh.colors, center, size)
    except ValueError as exc:
        raise JobError("init.mesh", f"{path.rsplit('/', 1)[-1]} {exc}") from None


def fit_field_to_mesh(field: Field, solid: MeshSolid, generator: torch.Generator, *, steps: int = FIT_STEPS,
                      on_progress=None) -> dict:
    """Fit `field` in place; returns the fit's report (occupancy IoU, colour error, seconds)."""
    started = time.monotonic()
    device = field.center.device
    opt = torch.optim.Adam(field.parameter_groups(FIT_LR), betas=(0.9, 0.99), eps=1e-15)
    field.train()
    for step in range(steps):
        half = FIT_BATCH // 2
        points = torch.cat([solid.in_box(half, generator), solid.near_surface(half, generator)]).to(device)
        density, albedo = field(points)
        target = solid.sample("density", points)
        near = (solid.sample("inside", points) - 0.5).abs() < 0.5  # the cells either side of the surface
        loss = (torch.log1p(density) - torch.log1p(target)).pow(2).mean()
        loss = loss + ((albedo - solid.sample("albedo", points)).pow(2).sum(-1) * near).sum() / near.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_progress is not None and (step + 1) % 50 == 0:
            on_progress(step + 1, steps)
    field.eval()
    report = measure_fit(field, solid, generator)
    report["seconds"] = round(time.monotonic() - started, 2)
    report["steps"] = steps
    return report


@torch.no_grad()
def measure_fit(field: Field, solid: MeshSolid, generator: torch.Generator, count: int = 65536) -> dict:
    """Occupancy IoU over the box (the field's surface level against the mesh's inside) and the
    mean absolute sRGB colour error at points around the surface."""
    device = field.center.device
    points = torch.cat([solid.in_box(count, generator), solid.near_surface(count, generator, 1.0)]).to(device)
    density, albedo = field(points)
    mine = density > SURFACE_DENSITY
    theirs = solid.sample("inside", points) > 0.5
    iou = float((mine & theirs).sum()) / max(float((mine | theirs).sum()), 1.0)
    surface = points[count:]
    error = (albedo[count:] - solid.sample("albedo", surface)).abs().mean()
    return {"iou": round(iou, 4), "colour_error": round(float(error), 4)}


class KeepShape:
    """`optim.keep_shape`: the field's occupancy held near the mesh's (see the module's docstring)."""

    def __init__(self, solid: MeshSolid, weight: float, schedule: str, generator: torch.Generator):
        self.solid = solid
        self.weight = float(weight)
        self.schedule = schedule
        self.generator = generator

    def weight_at(self, step: int, total: int) -> float:
        if self.schedule == "linear":
            return self.weight * max(0.0, 1.0 - step / max(total, 1))
        return self.weight

    def loss(self, field: Field, step: int, total: int) -> torch.Tensor | None:
        weight = self.weight_at(step, total)
        if weight <= 0:
            return None
        half = KEEP_BATCH // 2
        points = torch.cat([self.solid.in_box(half, self.generator),
                            self.solid.near_surface(half, self.generator)]).to(field.center.device)
        density = field.density(points)
        logit = OCCUPANCY_SHARPNESS * (torch.log(density + 1e-6) - torch.log(torch.tensor(SURFACE_DENSITY)))
        return weight * F.binary_cross_entropy_with_logits(logit, self.solid.sample("inside", points))
