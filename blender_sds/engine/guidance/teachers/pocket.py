"""The pocket teacher: the exact (closed-form) diffusion model of the pocket world's renders.

Its denoiser is the posterior mean of a finite data set (closed_form.py): a real diffusion
model of that data that needs no training and, like SDS's 2D judge, sees flat images, not 3D. The
conditional data are renders of the prompt's object (by view direction when prompting is
view-dependent); the unconditional data span the whole world (the prompt's own renders
among them), or are the negative prompt's object. Noise, timesteps, weighting and CFG are
the rule's (rules/).

Framing: the data's cameras vary in distance and field of view, so the same object appears
at sizes 2.6x apart. A camera-blind closed-form teacher then leaves the object's size free
(any render matches some datum) and SDS settled on objects ~25% too small. So both
branches see only data framed like the judged image (apparent size of the bounds within
+-10%), the way camera-conditioned models (Zero-1-to-3, MVDream) share the camera between
the conditional and unconditional branch.

By default (`guidance.pose_matched`) both branches' data are instead rendered at each
judged camera (posed.py), with random lights and shadings: a camera-conditioned teacher.
Camera-blind, a memorising teacher answers a render with a neighbour in another pose, and
for a 4-fold object the neighbours of a symmetric blob sit at every phase, so pyramids
and cubes came back as bodies of revolution (docs/QUALITY.md). Direction buckets and
framing are then moot: every datum has the judged camera.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...pocket import dataset, posed, world
from ...pocket.dataset import ViewSet
from ...scene.directions import direction_index
from ...scene.views import ViewBatch
from ...settings import GuidanceSettings
from ..predictor import NoisePredictor
from .closed_form import epsilon, posterior_mean, scaled_linear_alphas_cumprod

FRAMING_WIDTH = 0.1  # data within +-10% of the judged camera's apparent scale answer it
FRAMING_MINIMUM = (16, 64)  # at least this many (conditional, unconditional) data answer each image


def framing_mask(data: torch.Tensor, judged: torch.Tensor, allowed: torch.Tensor, minimum: int) -> torch.Tensor:
    """(B,N) the allowed data whose framing is within FRAMING_WIDTH of each judged image's, or the nearest `minimum`."""
    gap = (data[None, :] - judged[:, None]).abs().masked_fill(~allowed, float("inf"))
    k = min(minimum, gap.shape[1])
    limit = torch.maximum(gap.kthvalue(k, dim=1).values, torch.full_like(judged, FRAMING_WIDTH))
    return allowed & (gap <= limit[:, None])


class PocketPredictor(NoisePredictor):
    """Pixel-space noise predictor: the closed-form denoiser of the pocket world's renders."""

    needs_solid_background = True
    # The world's images are flat albedo or lit (issue 4); judged against them, textureless
    # (grey) renders pulled shape towards white objects: a red cube came back at 47-69% of
    # its silhouette area with them, 86% without (docs/QUALITY.md).
    shadings = ("albedo", "lambertian")

    def __init__(self, settings: GuidanceSettings, device, *, cond_views: int | None = None,
                 world_views: int | None = None, supersample: int = 2):
        super().__init__(settings, scaled_linear_alphas_cumprod(), device)
        self.prompt = settings.prompt
        self.colour, self.shape = world.parse_prompt(self.prompt)
        self.resolution = settings.resolution
        self.center = torch.tensor(settings.bounds.center, dtype=torch.float32, device=self.device)
        self.bounds_size = settings.bounds.size
        self.view_dependent = settings.view_dependent
        self.pose_matched = settings.pose_matched
        r = self.resolution
        negative = settings.negative_prompt.strip()
        self.negative = None
        if negative:
            try:
                self.negative = world.prompt_for(*world.parse_prompt(negative))
            except world.PocketPromptError as error:
                raise ValueError(f"negative_prompt: {error.problem}") from None
        if self.pose_matched:  # data are rendered per judged camera (posed.py); nothing to cache
            self.pose_generator = torch.Generator().manual_seed(dataset.seed_of("posed", settings.seed))
            return
        cond_views = cond_views or dataset.scaled_count(dataset.COND_VIEWS, r, 96)
        world_views = world_views or dataset.scaled_count(dataset.WORLD_VIEWS_PER_OBJECT, r, 8)
        self.cond = dataset.object_views(world.prompt_for(self.colour, self.shape), r, cond_views, 0,
                                         supersample).to(self.device)
        if self.negative:
            self.uncond = dataset.object_views(self.negative, r, cond_views, 1, supersample).to(self.device)
        else:
            self.uncond = dataset.unconditional_views(self.cond, dataset.world_views(r, world_views, 0, supersample)
                                                      .to(self.device))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images * 2 - 1

    def direction_mask(self, views: ViewBatch) -> torch.Tensor:
        """Per judged camera, the conditional views whose direction bucket matches (all if none does)."""
        if not self.view_dependent:
            return torch.ones(views.size, len(self.cond), dtype=torch.bool, device=self.device)
        judged = direction_index(views.azimuth.float(), views.elevation.float()).to(self.device)
        mask = judged[:, None] == self.cond.direction[None, :]
        empty = ~mask.any(dim=-1, keepdim=True)
        return mask | empty

    def judged_framing(self, views: ViewBatch) -> torch.Tensor:
        """(B,) log apparent size of the bounds in each judged image, as `Orbit.framing` measures data."""
        eye = views.c2w[:, :3, 3].to(self.device, torch.float32)
        distance = (eye - self.center).norm(dim=-1) / self.bounds_size
        return torch.log(views.fy.to(self.device, torch.float32) / views.height / distance)

    def cond_mask(self, views: ViewBatch) -> torch.Tensor:
        return framing_mask(self.cond.framing, self.judged_framing(views), self.direction_mask(views),
                            FRAMING_MINIMUM[0])

    def uncond_mask(self, views: ViewBatch) -> torch.Tensor:
        allowed = torch.ones(views.size, len(self.uncond), dtype=torch.bool, device=self.device)
        return framing_mask(self.uncond.framing, self.judged_framing(views), allowed, FRAMING_MINIMUM[1])

    def posed_data(self, views: ViewBatch) -> tuple[ViewSet, torch.Tensor, ViewSet, torch.Tensor]:
        """(cond, cond_mask, uncond, uncond_mask) rendered at the judged cameras (`guidance.pose_matched`)."""
        orbit = posed.judged_orbit(views, self.center, self.bounds_size)
        g = self.pose_generator
        cond, owner = posed.object_views(world.prompt_for(self.colour, self.shape), orbit, self.resolution, g)
        if self.negative:
            uncond, u_owner = posed.object_views(self.negative, orbit, self.resolution, g)
        else:
            uncond, u_owner = posed.world_views(orbit, self.resolution, g)
        return (cond.to(self.device), posed.owner_mask(owner, views.size, self.device),
                uncond.to(self.device), posed.owner_mask(u_owner, views.size, self.device))

    def predict(self, z_t, t, views, names):
        self.require_known(names)
        a = self.alphas_cumprod[t]
        bg = views.background if views.background is not None else torch.ones(z_t.shape[0], 3)
        bg = bg.to(self.device, z_t.dtype)
        if self.pose_matched:  # both sets are drawn whatever is asked: the data's random stream stays one
            cond, cond_mask, uncond, uncond_mask = self.posed_data(views)
            data = {"prompt": (cond, cond_mask), "uncond": (uncond, uncond_mask)}
        else:
            data = {"prompt": (self.cond, None), "uncond": (self.uncond, None)}
        out = {}
        for name in names:
            images, mask = data[name]
            if mask is None:
                mask = self.cond_mask(views) if name == "prompt" else self.uncond_mask(views)
            out[name] = epsilon(z_t, posterior_mean(z_t, a, images, bg, mask), a)
        return out
