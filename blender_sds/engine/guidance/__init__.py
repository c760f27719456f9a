"""The 2D judges, behind one interface (`ScoreDistillation`); kinds load lazily."""
from __future__ import annotations

import torch

from .base import GuidanceOutput, ScoreDistillation


def build_guidance(job: dict, device: torch.device) -> ScoreDistillation:
    """The guidance a normalised job asks for, ready to judge renders on `device`."""
    kind = job["guidance"]["kind"]
    if kind in ("stable-diffusion", "pixel"):
        if kind == "stable-diffusion":
            from .predictors.stable_diffusion import StableDiffusionGuidance as Kind
        else:
            from .predictors.pixel import PixelGuidance as Kind
        guidance = Kind(job, device)
        from .predictors import cuda_graphs
        if job["guidance"]["cuda_graphs"] and cuda_graphs.usable(guidance.device, guidance.low_vram):
            cuda_graphs.graph_judge(guidance)
        return guidance
    if kind == "reference":
        from .teachers.reference import ReferenceGuidance
        return ReferenceGuidance(job, device)
    if kind == "pocket":
        from .teachers.pocket import PocketGuidance
        return PocketGuidance(job, device)
    raise ValueError(f"guidance.kind: unknown kind {kind!r}")


__all__ = ["GuidanceOutput", "ScoreDistillation", "build_guidance"]
