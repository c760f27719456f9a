"""The pocket teacher: the exact (closed-form) diffusion model of the pocket world's renders.

For a finite data set {x_i} under the forward process z_t = sqrt(a) x + sqrt(1-a) eps, the
optimal denoiser is the posterior mean
    x0_hat(z_t) = sum_i softmax_i(-|z_t - sqrt(a) x_i|^2 / (2 (1 - a))) x_i,
and eps_hat = (z_t - sqrt(a) x0_hat) / sqrt(1 - a). It is a real diffusion model of that
data that needs no training and, like SDS's 2D judge, sees flat images, not 3D. The
conditional data are renders of the prompt's object (by view direction when prompting is
view-dependent); the unconditional data span the whole world (the prompt's own renders
among them), or are the negative prompt's object. Noise, timesteps, weighting and CFG are
ScoreDistillation's.

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

Data are premultiplied, so compositing onto each judged image's background is folded into
the distance algebra: with x_i = Q_i + k, Q_i = 2 P_i - 2 A_i bg, k = 2 bg - 1,
    |z - s x_i|^2 = |y|^2 - 2 s y.Q_i + s^2 |Q_i|^2,   y = z - s k,
so a step costs a few matrix products with the data, whatever the background.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import ScoreDistillation
from ..predictors.prompts import direction_index
from ...scene.views import ViewBatch
from ...pocket import dataset, posed, world
from ...pocket.dataset import ViewSet

NUM_TRAIN_TIMESTEPS = 1000
FRAMING_WIDTH = 0.1  # data within +-10% of the judged camera's apparent scale answer it
FRAMING_MINIMUM = (16, 64)  # at least this many (conditional, unconditional) data answer each image
BETA_START, BETA_END = 0.00085, 0.012


def scaled_linear_alphas_cumprod(steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Stable Diffusion's schedule (diffusers' "scaled_linear"), so t ranges mean the same for every kind."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def posterior_mean(z_t: torch.Tensor, alpha_bar: torch.Tensor, data: ViewSet, background: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """x0_hat (B,3,H,W) in [-1,1] of noisy samples z_t given data composited on `background` (B,3) sRGB.

    `alpha_bar` is (B,); `mask` (B,N) bool keeps, per sample, the data it may use (None: all);
    each datum weighs in with its `log_prior` (a mixture of objects with equal weights).
    Computed in z_t's dtype (float64 in tests, float32 in runs), with a log-sum-exp softmax.
    """
    b = z_t.shape[0]
    dtype = z_t.dtype
    d = data.alpha.shape[1]
    colour, alpha = data.colour.to(dtype), data.alpha.to(dtype)
    bg = background.to(dtype).view(b, 3)
    s = alpha_bar.to(dtype).sqrt().view(b, 1)
    k = 2 * bg - 1
    y = z_t.reshape(b, 3, d) - s[:, :, None] * k[:, :, None]  # (B,3,D)
    y_dot_p = y.reshape(b, 3 * d) @ colour.T  # (B,N)
    y_dot_a = (y.reshape(b * 3, d) @ alpha.T).view(b, 3, -1)  # (B,3,N)
    y_dot_q = 2 * y_dot_p - 2 * (bg[:, :, None] * y_dot_a).sum(1)
    q_sq = (4 * data.colour_sq.to(dtype)[None] - 8 * bg @ data.colour_alpha.to(dtype).T
            + 4 * (bg**2).sum(-1, keepdim=True) * data.alpha_sq.to(dtype)[None])
    logits = (2 * s * y_dot_q - s**2 * q_sq) / (2 * (1 - s**2))  # -|y - s Q|^2 / 2(1-a) + const
    logits = logits + data.log_prior.to(dtype)[None]
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1)  # subtracts the max: the log-sum-exp form
    mean_p = (weights @ colour).view(b, 3, d)
    mean_a = weights @ alpha  # (B,D)
    x0 = 2 * mean_p - 2 * mean_a[:, None, :] * bg[:, :, None] + k[:, :, None]
    return x0.view_as(z_t)


def framing_mask(data: torch.Tensor, judged: torch.Tensor, allowed: torch.Tensor, minimum: int) -> torch.Tensor:
    """(B,N) the allowed data whose framing is within FRAMING_WIDTH of each judged image's, or the nearest `minimum`."""
    gap = (data[None, :] - judged[:, None]).abs().masked_fill(~allowed, float("inf"))
    k = min(minimum, gap.shape[1])
    limit = torch.maximum(gap.kthvalue(k, dim=1).values, torch.full_like(judged, FRAMING_WIDTH))
    return allowed & (gap <= limit[:, None])


def epsilon(z_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a = alpha_bar.to(z_t.dtype).view(-1, 1, 1, 1)
    return (z_t - a.sqrt() * x0) / (1 - a).sqrt()


class PocketGuidance(ScoreDistillation):
    """Pixel-space SDS judge with the closed-form denoiser of the pocket world's renders."""

    needs_solid_background = True
    # The world's images are flat albedo or lit (issue 4); judged against them, textureless
    # (grey) renders pulled shape towards white objects: a red cube came back at 47-69% of
    # its silhouette area with them, 86% without (docs/QUALITY.md).
    shadings = ("albedo", "lambertian")

    def __init__(self, job: dict, device, *, cond_views: int | None = None, world_views: int | None = None,
                 supersample: int = 2):
        options = job["guidance"]
        super().__init__(options, scaled_linear_alphas_cumprod(), device, int(job.get("seed", 0)))
        self.prompt = job["prompt"]
        self.colour, self.shape = world.parse_prompt(self.prompt)
        self.resolution = int(job["render"]["resolution"])
        self.center = torch.tensor(job["bounds"]["center"], dtype=torch.float32, device=self.device)
        self.bounds_size = float(job["bounds"]["size"])
        self.view_dependent = bool(options.get("view_dependent", True))
        self.pose_matched = bool(options.get("pose_matched", False))
        r = self.resolution
        negative = (job.get("negative_prompt") or "").strip()
        self.negative = None
        if negative:
            try:
                self.negative = world.prompt_for(*world.parse_prompt(negative))
            except ValueError as error:
                raise ValueError("negative_prompt" + str(error)[len("prompt"):]) from None
        if self.pose_matched:  # data are rendered per judged camera (posed.py); nothing to cache
            self.pose_generator = torch.Generator().manual_seed(dataset.seed_of("posed", job.get("seed", 0)))
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

    def predict_noise(self, z_t, t, views):
        a = self.alphas_cumprod[t]
        bg = views.background if views.background is not None else torch.ones(z_t.shape[0], 3)
        bg = bg.to(self.device, z_t.dtype)
        if self.pose_matched:
            cond, cond_mask, uncond, uncond_mask = self.posed_data(views)
        else:
            cond, cond_mask, uncond, uncond_mask = self.cond, self.cond_mask(views), self.uncond, self.uncond_mask(views)
        x0_cond = posterior_mean(z_t, a, cond, bg, cond_mask)
        x0_uncond = posterior_mean(z_t, a, uncond, bg, uncond_mask)
        return epsilon(z_t, x0_cond, a), epsilon(z_t, x0_uncond, a)
