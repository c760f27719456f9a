"""Score distillation, written once for every kind of 2D judge.

A kind only says how images become the diffusion model's sample space (`encode`) and
what noise the model predicts for a noisy sample (`predict_noise`). Noise, timestep
schedule, weighting w(t), classifier-free guidance, gradient clipping and the
gradient-injection loss live here, so the reference teacher, the pocket world and
Stable Diffusion are judged by exactly the same rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..scene.views import ViewBatch


@dataclass
class GuidanceOutput:
    loss: torch.Tensor  # scalar; d loss / d z = w(t)(eps_hat - eps) / B exactly
    figures: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars, never .item()'d here


def schedule_value(value, step: int) -> float | None:
    """A scalar or a linear ramp [start_step, start_value, end_value, end_step]."""
    if value is None or isinstance(value, (int, float)):
        return value
    s0, v0, v1, s1 = value
    if step <= s0:
        return float(v0)
    if step >= s1:
        return float(v1)
    return float(v0 + (v1 - v0) * (step - s0) / (s1 - s0))


class ScoreDistillation:
    """SDS with the diffusers CFG convention: eps_hat = eps_u + s * (eps_c - eps_u)."""

    needs_solid_background = False  # a kind whose targets need to know the background says so
    # The shadings this judge has seen images like; the engine renders no other for it.
    shadings: tuple[str, ...] = ("albedo", "textureless", "lambertian")

    def __init__(self, options: dict, alphas_cumprod: torch.Tensor, device: torch.device, seed: int):
        self.options = options
        self.device = torch.device(device)
        self.alphas_cumprod = alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.scale = float(options["scale"])
        lo, hi = options["t_range"]
        self.min_step = int(self.num_train_timesteps * lo)
        self.max_step = int(self.num_train_timesteps * hi)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed) + 1)

    # -- what a kind provides -------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [0,1] -> samples z, differentiably."""
        raise NotImplementedError

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, views: ViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_cond, eps_uncond) for the noisy samples; called under no_grad."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {}

    # -- the shared rule -------------------------------------------------------------------
    def timesteps(self, batch: int, step: int, total_steps: int) -> torch.Tensor:
        if self.options.get("t_schedule", "random") == "anneal":
            p = math.sqrt(min(max(step / max(total_steps - 1, 1), 0.0), 1.0))
            t = round(self.max_step - (self.max_step - self.min_step) * p)
            return torch.full((batch,), t, dtype=torch.long, device=self.device)
        return torch.randint(self.min_step, self.max_step + 1, (batch,), generator=self.generator,
                             device=self.device)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t]
        kind = self.options.get("weighting", "sds")
        if kind == "uniform":
            return torch.ones_like(a)
        if kind == "fantasia3d":
            return a.sqrt() * (1 - a)
        return 1 - a

    def combine(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor) -> torch.Tensor:
        return eps_uncond + self.scale * (eps_cond - eps_uncond)

    def gradient(self, z: torch.Tensor, views: ViewBatch, step: int, total_steps: int,
                 noise: torch.Tensor | None = None, t: torch.Tensor | None = None):
        """The distillation gradient on z (no autograd), and what it was made from."""
        batch = z.shape[0]
        if t is None:
            t = self.timesteps(batch, step, total_steps)
        if noise is None:
            noise = torch.randn(z.shape, generator=self.generator, device=z.device, dtype=z.dtype)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(z.dtype)
        with torch.no_grad():
            z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
            eps_cond, eps_uncond = self.predict_noise(z_t, t, views)
            eps_hat = self.combine(eps_cond.to(z.dtype), eps_uncond.to(z.dtype))
            grad = self.weight(t).view(-1, 1, 1, 1).to(z.dtype) * (eps_hat - noise)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            clip = schedule_value(self.options.get("grad_clip"), step)
            if clip is not None:
                grad = grad.clamp(-clip, clip)
        return grad, t

    def __call__(self, images: torch.Tensor, views: ViewBatch, step: int, total_steps: int,
                 noise: torch.Tensor | None = None, t: torch.Tensor | None = None) -> GuidanceOutput:
        z = self.encode(images)
        grad, t = self.gradient(z, views, step, total_steps, noise=noise, t=t)
        target = (z - grad).detach()
        # d/dz of 0.5*|z - target|^2 / B is grad / B: the reparameterisation trick.
        loss = 0.5 * F.mse_loss(z.float(), target.float(), reduction="sum") / z.shape[0]
        figures = {"grad_norm": grad.float().norm().detach(), "t": t.float().mean()}
        return GuidanceOutput(loss=loss, figures=figures)


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's noise schedule, for the closed-form teachers: their t, w(t) and
    t_range then mean what they mean for SD."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()
