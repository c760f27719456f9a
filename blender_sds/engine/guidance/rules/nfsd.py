"""Noise-free score distillation (Katzir et al., ICLR 2024), at normal CFG.

SDS's eps_hat - eps splits into a condition term delta_C = eps_prompt - eps_null (what the
prompt adds), a domain term delta_D (what makes the image look like a photo at all) and the
random noise itself, which only adds variance; SDS needs CFG 100 to drown that noise. NFSD
drops it and keeps the other two at the CFG images are sampled at (guidance.scale, the kind's
sampling_scale):

    grad = w(t) [delta_D + s delta_C],
    delta_D = eps_null                   for t < 200 (of 1000 training steps; scaled to the model's),
            = eps_null - eps_negative    otherwise,

with null the empty prompt and the negative the job's negative_prompt (its published default:
"unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution,
gloomy"). The paper finds the empty prompt's prediction at small t to be mostly the domain
correction; at larger t it still carries the noise, which the negative's prediction carries
too, so their difference keeps the correction "away from blurry, dull, dark" without it.
Source: Katzir et al., as ../shared/reference/sds-methods.md 4.5 records it. Three predictions
a step (prompt, null, negative); two without a negative (a kind with no text), where delta_D
is then 0 from t = 200.
"""
from __future__ import annotations

import torch

from .base import ScoreDistillation

DOMAIN_T = 200  # below this timestep (of 1000) the null prediction is the domain term


class NFSD(ScoreDistillation):
    conditions = ("prompt", "null", "uncond")

    def __init__(self, settings, predictor):
        super().__init__(settings, predictor)
        self.domain_t = DOMAIN_T * self.num_train_timesteps / 1000
        self.negative = bool(settings.negative_prompt.strip())

    def asked(self, views) -> tuple[str, ...]:
        return self.conditions if self.negative else ("prompt", "null")

    def residual(self, predictions, noise, z_t, t, views, step, total_steps) -> torch.Tensor:
        null = predictions["null"]
        negative = predictions.get("uncond", null)  # no negative: the empty prompt is CFG's other branch
        small = (t < self.domain_t).view(-1, *([1] * (null.dim() - 1)))
        domain = torch.where(small, null, null - negative)
        return domain + self.scale * (predictions["prompt"] - null)
