"""Perp-Neg (Armandpour et al. 2023), as threestudio runs it with view-dependent prompts.

A 2D judge asked for "a dog, back view" still leans towards the front it has mostly seen;
Perp-Neg asks it for the other directions too and pushes away from them, keeping only the
part of each negative's direction that is perpendicular to the positive's, so the
negative never cancels what the positive asks for. Per camera (azimuth a, |a| < 90 the
front sector): the positive is the direction prompts interpolated, r front + (1-r) side
with r = 1 - |a|/90 (r side + (1-r) back, r = 2 - |a|/90, behind), the negatives are
[front, side] ([side, front] behind) with weights w = -(a exp(-b r) + c) from
`guidance.perp_neg`; overhead cameras get their own prompt and no negatives. Then

    eps_hat = eps_u + s [e_pos + sum_i w_i perp(e_i, e_pos)],   e = eps - eps_u,

with perp(x, y) = x - <x,y>/max(|y|^2, 1e-6) y per sample. Four predictions a step, 2x SDS's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...scene.directions import DIRECTIONS, direction_index
from ...scene.views import ViewBatch
from ..predictor import Blend
from .base import ScoreDistillation

SIDE, FRONT, BACK, OVERHEAD = (DIRECTIONS.index(d) for d in ("side", "front", "back", "overhead"))


def perpendicular(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The part of each sample of x perpendicular to the same sample of y."""
    dims = tuple(range(1, x.dim()))
    along = (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp_min(1e-6)
    return x - along * y


def decay(triple, r: torch.Tensor) -> torch.Tensor:
    a, b, c = triple
    return a * torch.exp(-b * r) + c


def plan(azimuth: torch.Tensor, elevation: torch.Tensor, weights: dict) -> tuple[torch.Tensor, list, torch.Tensor]:
    """(positive (B,4), [negative (B,4), negative (B,4)], negative weights (B,2)) over DIRECTIONS."""
    def hot(index):
        return F.one_hot(index, len(DIRECTIONS)).float()

    az = (torch.remainder(azimuth.float() + 180.0, 360.0) - 180.0).abs()
    front = az < 90
    r = torch.where(front, 1 - az / 90, 2 - az / 90)
    first = torch.where(front, FRONT, SIDE)  # the near end of the camera's sector
    second = torch.where(front, SIDE, FRONT)
    positive = r[:, None] * hot(first) + (1 - r[:, None]) * hot(torch.where(front, SIDE, BACK))
    w = torch.stack((torch.where(front, -decay(weights["f_fs"], r), -decay(weights["f_sb"], r)),
                     torch.where(front, -decay(weights["f_sf"], 1 - r), -decay(weights["f_fsb"], r))), 1)
    overhead = direction_index(azimuth, elevation).to(az.device) == OVERHEAD
    top = torch.full_like(first, OVERHEAD)
    positive = torch.where(overhead[:, None], hot(top), positive)
    first, second = torch.where(overhead, top, first), torch.where(overhead, top, second)
    w = torch.where(overhead[:, None], torch.zeros_like(w), w)
    return positive, [hot(first), hot(second)], w


# Each negative slot's weight triples (front sector, back sector): a slot whose triples are both
# zero never weighs anything.
SLOTS = (("f_fs", "f_sb"), ("f_sf", "f_fsb"))


class PerpNeg(ScoreDistillation):
    """A negative slot whose weights are zero for every camera (`guidance.perp_neg` says so) costs no
    prediction: with every weight zero this is SDS on the interpolated prompts, prediction for
    prediction. Otherwise both are asked every step, so the judge's batch keeps one shape (CUDA
    graphs replay one capture), even for cameras whose weight is zero (overhead)."""

    conditions = ("positive", "uncond", "negative_0", "negative_1")

    def __init__(self, settings, predictor):
        super().__init__(settings, predictor)
        self.triples = settings.perp_neg
        self.slots = [i for i, names in enumerate(SLOTS)
                      if any(self.triples[n][0] != 0 or self.triples[n][2] != 0 for n in names)]
        self.predictor.require_known((Blend("positive", torch.zeros(1, len(DIRECTIONS))),))

    def asked(self, views: ViewBatch) -> tuple:
        positive, negatives, _ = plan(views.azimuth, views.elevation, self.triples)
        return (Blend("positive", positive), "uncond", *(Blend(f"negative_{i}", negatives[i]) for i in self.slots))

    def combine(self, predictions: dict[str, torch.Tensor], views: ViewBatch) -> torch.Tensor:
        _, _, w = plan(views.azimuth, views.elevation, self.triples)
        uncond = predictions["uncond"]
        e_pos = predictions["positive"] - uncond
        w = w.to(uncond.device, uncond.dtype)
        guided = e_pos
        for i in range(w.shape[1]):
            if f"negative_{i}" in predictions:
                weight = w[:, i].view(-1, *([1] * (uncond.dim() - 1)))
                guided = guided + weight * perpendicular(predictions[f"negative_{i}"] - uncond, e_pos)
        return uncond + self.scale * guided
