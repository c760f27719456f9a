"""Classifier score distillation (Yu et al. 2023), as its official code runs it.

The classifier term of CFG alone is the gradient, with no noise and no unconditional score:

    grad = w(t) s [eps_prompt - (1 - beta) eps_null - beta eps_negative],

beta rising linearly from 0 to 1 over the first ANNEAL_SHARE of the run and then held at 1,
so the judgement moves from "towards the prompt, away from any image" to "towards the prompt,
away from the negative" (published: "oversaturated color, ugly, tiling, low quality, noisy").
CVMI-Lab/Classifier-Score-Distillation configs/csd-if.yaml anneals null_scale -1 -> 0 and
uncond_scale 0 -> -1 over 5,000 of its 10,000 steps: half the run, scaled here to the job's
steps. With no negative (a kind with no text) beta stays 0 and two predictions are asked, else three.

w(t) is uniform by default (the rule's guidance.weighting). After weighting and clipping the
gradient is normalised (the official grad_normalize): the official code divides the whole
batch's gradient by its L2 norm, which at its batch of 1 is one camera's; here it is divided
by its L2 norm over the whole batch and multiplied by sqrt(B), so it keeps the batch's
direction (the relative size of each camera's part) and its cameras' root-mean-square norm is 1
whatever render.batch is. So s (guidance.scale) changes only what guidance.grad_clip clamps.
"""
from __future__ import annotations

import math

import torch

from .base import ScoreDistillation, schedule_value

ANNEAL_SHARE = 0.5  # of the run over which beta rises 0 -> 1 (the official 5,000 of 10,000 steps)
NORM_EPS = 1e-8  # the official code's, against a zero gradient


class CSD(ScoreDistillation):
    conditions = ("prompt", "null", "uncond")

    def __init__(self, settings, predictor):
        super().__init__(settings, predictor)
        self.negative = bool(settings.negative_prompt.strip())

    def asked(self, views) -> tuple[str, ...]:
        return self.conditions if self.negative else ("prompt", "null")

    def beta(self, step: int, total_steps: int) -> float:
        """The negative's share of the unconditional side at this step (0 -> 1, then 1)."""
        if not self.negative:
            return 0.0
        return schedule_value([0, 0.0, 1.0, max(round(ANNEAL_SHARE * total_steps), 1)], step)

    def residual(self, predictions, noise, z_t, t, views, step, total_steps) -> torch.Tensor:
        beta = self.beta(step, total_steps)
        null = predictions["null"]
        negative = predictions.get("uncond", null)
        return self.scale * (predictions["prompt"] - (1 - beta) * null - beta * negative)

    def finish(self, grad: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
        return grad * (math.sqrt(grad.shape[0]) / (grad.norm() + NORM_EPS))
