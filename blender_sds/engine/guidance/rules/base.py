"""Score distillation, written once for every rule and every noise predictor.

Noise, timestep schedule, weighting w(t), gradient clipping and the gradient-injection
loss live here; a rule says which conditions it asks the predictor for (`asked`, per batch
of cameras) and how their predictions combine into the noise estimate (`combine`). So the reference
teacher, the pocket world and Stable Diffusion are judged by exactly the same rule. A rule
whose gradient is not `eps_hat - noise` (NFSD, CSD, VSD) says what w(t) multiplies instead
(`residual`), and one that rescales the whole gradient (CSD's normalisation) does so in `finish`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...scene.views import ViewBatch
from ...settings import GuidanceSettings
from ..predictor import NoisePredictor, condition_name


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
    """The loop's judge: a rule over a predictor. Rules subclass it with `conditions` and `combine`."""

    conditions: tuple[str, ...] = ()

    def __init__(self, settings: GuidanceSettings, predictor: NoisePredictor):
        self.settings = settings
        self.predictor = predictor
        self.device = predictor.device
        self.alphas_cumprod = predictor.alphas_cumprod
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.scale = schedule_value(settings.scale, 0)  # this step's CFG scale (guidance.scale may ramp)
        lo, hi = settings.t_range
        self.min_step = int(self.num_train_timesteps * lo)
        self.max_step = int(self.num_train_timesteps * hi)
        self.generator = torch.Generator(device=self.device).manual_seed(int(settings.seed) + 1)
        self.predictions = 0

    # -- what the loop reads from the predictor ---------------------------------------------
    @property
    def needs_solid_background(self) -> bool:
        return self.predictor.needs_solid_background

    @property
    def shadings(self) -> tuple[str, ...]:
        return self.predictor.shadings

    @property
    def rig(self) -> list[dict] | None:
        return self.predictor.rig

    def trained_parts(self) -> list:
        """Parts of the judge that train with the scene (a rule's own network, e.g. VSD's LoRA)."""
        return []

    # -- what a rule provides ----------------------------------------------------------------
    def asked(self, views: ViewBatch) -> tuple:
        """The conditions this step needs predictions for (names of predictor.CONDITIONS, or Blends)."""
        return self.conditions

    def combine(self, predictions: dict[str, torch.Tensor], views: ViewBatch) -> torch.Tensor:
        """The noise estimate eps_hat from {condition name: eps}."""
        raise NotImplementedError

    def residual(self, predictions: dict[str, torch.Tensor], noise: torch.Tensor, z_t: torch.Tensor,
                 t: torch.Tensor, views: ViewBatch, step: int, total_steps: int) -> torch.Tensor:
        """What w(t) multiplies into the gradient on z: SDS's eps_hat - noise."""
        return self.combine(predictions, views) - noise

    def finish(self, grad: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
        """The gradient after weighting and clipping, as the loss injects it (a rule may rescale it)."""
        return grad

    def clip_at(self, step: int, total_steps: int) -> float | None:
        """The element-wise gradient clamp at this step (guidance.grad_clip; None: none)."""
        return schedule_value(self.settings.grad_clip, step)

    # -- the shared part ---------------------------------------------------------------------
    def timesteps(self, batch: int, step: int, total_steps: int) -> torch.Tensor:
        if self.settings.t_schedule == "anneal":
            p = math.sqrt(min(max(step / max(total_steps - 1, 1), 0.0), 1.0))
            t = round(self.max_step - (self.max_step - self.min_step) * p)
            return torch.full((batch,), t, dtype=torch.long, device=self.device)
        return torch.randint(self.min_step, self.max_step + 1, (batch,), generator=self.generator,
                             device=self.device)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t]
        if self.settings.weighting == "uniform":
            return torch.ones_like(a)
        if self.settings.weighting == "fantasia3d":
            return a.sqrt() * (1 - a)
        return 1 - a

    def gradient(self, z: torch.Tensor, views: ViewBatch, step: int, total_steps: int,
                 noise: torch.Tensor | None = None, t: torch.Tensor | None = None):
        """The distillation gradient on z (no autograd), and what it was made from."""
        batch = z.shape[0]
        self.scale = schedule_value(self.settings.scale, step)
        if t is None:
            t = self.timesteps(batch, step, total_steps)
        if noise is None:
            noise = torch.randn(z.shape, generator=self.generator, device=z.device, dtype=z.dtype)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(z.dtype)
        with torch.no_grad():
            z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
            asked = self.asked(views)
            self.predictions = len(asked)  # the judge's evaluations this step (UNet passes per image)
            predictions = self.predictor.predict(z_t, t, views, asked)
            missing = [condition_name(c) for c in asked if condition_name(c) not in predictions]
            if missing:
                raise RuntimeError(f"guidance: the predictor gave no prediction for {missing}")
            predictions = {name: eps.to(z.dtype) for name, eps in predictions.items()}
            residual = self.residual(predictions, noise, z_t, t, views, step, total_steps)
        return self.weighted(residual, t, step, total_steps), t

    @torch.no_grad()
    def weighted(self, residual: torch.Tensor, t: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
        """w(t) times a residual, finite, clipped and finished: the gradient the loss injects."""
        grad = self.weight(t).view(-1, 1, 1, 1).to(residual.dtype) * residual
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        clip = self.clip_at(step, total_steps)
        if clip is not None:
            grad = grad.clamp(-clip, clip)
        return self.finish(grad, step, total_steps)

    def splits(self, step: int) -> bool:
        """Whether this step's gradient comes in two: one for the density, one for the colour
        (render(split=True) and __call__'s `split`; VSD's guidance.estimator.density_scale)."""
        return False

    def figures(self, grad: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"grad_norm": grad.float().norm().detach(), "t": t.float().mean(),
                "predictions": torch.tensor(float(self.predictions))}

    def __call__(self, images: torch.Tensor, views: ViewBatch, step: int, total_steps: int,
                 noise: torch.Tensor | None = None, t: torch.Tensor | None = None,
                 split: tuple[torch.Tensor, torch.Tensor] | None = None) -> GuidanceOutput:
        """`split`: the render's (density, colour) images, for a rule that splits this step (`splits`)."""
        z = self.predictor.encode(images)
        grad, t = self.gradient(z, views, step, total_steps, noise=noise, t=t)
        return GuidanceOutput(loss=inject(z, grad), figures=self.figures(grad, t))


def inject(z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient on z is grad / B: d/dz of 0.5*|z - (z - grad)|^2 / B, the
    reparameterisation trick."""
    target = (z - grad).detach()
    return 0.5 * F.mse_loss(z.float(), target.float(), reduction="sum") / z.shape[0]
