"""Score Distillation Sampling (DreamFusion), with the diffusers CFG convention."""
from __future__ import annotations

import torch

from .base import ScoreDistillation


class SDS(ScoreDistillation):
    """eps_hat = eps_uncond + s * (eps_prompt - eps_uncond); at s = 1 that is the prompt's own
    prediction, and the unconditional branch is not asked for."""

    conditions = ("prompt", "uncond")

    def asked(self, views) -> tuple[str, ...]:
        return ("prompt",) if self.scale == 1.0 else self.conditions

    def combine(self, predictions: dict[str, torch.Tensor], views=None) -> torch.Tensor:
        return cfg(predictions, self.scale)


def cfg(predictions: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    if scale == 1.0:
        return predictions["prompt"]
    uncond = predictions["uncond"]
    return uncond + scale * (predictions["prompt"] - uncond)
