"""Starting from the artist's mesh: the field fitted to it, then kept near it while the judge works.

The fit is supervised and short (Adam on the field's own parameter groups, at points
scattered over the box and around the surface), so score distillation starts from the
blockout's shape and colours instead of a density blob. `KeepShape` is the loss of
`optim.keep_shape`, weighted constant or falling to zero over the run, in two parts:
binary cross-entropy between the field's occupancy and the mesh's at points around the
mesh's surface, and the squared difference between each judged render's opacity and the
mesh's coverage from the same camera (its outline), summed over pixels as the judge's loss
is. The outline is where the judge pushes (a camera-blind teacher widens a stretched cube
to the cube it knows), so that is where the edit must be held. Both read the mesh's grid,
not the mesh.
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
# The outline's weight beside the occupancy term's, per pixel: keep_shape 10 pulls each wrong
# pixel's opacity with 100 x its error, where the judge's own per-pixel gradient is ~1 (3-8 at
# its 99th percentile). A pocket cube stretched 1.6x and refined the whole 900 steps kept its
# height/width within 1% at this weight (docs/QUALITY.md "Starting from a mesh"); at 1 it lost
# 20%, and with no outline term 29%: the 3D term alone, at 1,024 points a step, barely touches the outline.
SILHOUETTE = 10.0
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

    def loss(self, field: Field, step: int, total: int, views=None, opacity: torch.Tensor | None = None
             ) -> torch.Tensor | None:
        """The weighted loss at `step` of `total` (None at weight 0); the outline term only when
        the judged `views` and their rendered `opacity` (B,1,H,W) are given."""
        weight = self.weight_at(step, total)
        if weight <= 0:
            return None
        half = KEEP_BATCH // 2
        points = torch.cat([self.solid.in_box(half, self.generator),
                            self.solid.near_surface(half, self.generator)]).to(field.center.device)
        density = field.density(points)
        logit = OCCUPANCY_SHARPNESS * (torch.log(density + 1e-6) - torch.log(torch.tensor(SURFACE_DENSITY)))
        loss = weight * F.binary_cross_entropy_with_logits(logit, self.solid.sample("inside", points))
        if views is not None:
            mask = self.solid.coverage(views)  # on the views' device, which rendered `opacity`
            loss = loss + weight * SILHOUETTE * 0.5 * (opacity - mask).pow(2).sum() / opacity.shape[0]
        return loss
