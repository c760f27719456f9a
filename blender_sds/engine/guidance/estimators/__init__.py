"""Estimators of the renders' own noise, eps_phi(x_t, t, camera), that VSD trains alongside the scene.

One per predictor family: a LoRA on the UNet for latent Stable Diffusion (lora.py), a small
camera-conditioned UNet trained from scratch for every pixel-space judge (pixel.py: the
pocket teacher, kind "pixel", the reference views). base.py has what they share and the
trained part that puts them in the run's optimiser and checkpoint.
"""
from __future__ import annotations

from ..predictor import NoisePredictor
from ...settings import GuidanceSettings
from .base import EstimatorPart, NoiseEstimator, camera_vector

__all__ = ["EstimatorPart", "NoiseEstimator", "build_estimator", "camera_vector"]

SEED_OFFSET = 3  # the estimator's initial weights: seed + 3 (the rule's streams use + 1 and + 2)


def build_estimator(settings: GuidanceSettings, predictor: NoisePredictor, rank: int) -> NoiseEstimator:
    """The estimator for this predictor's family, on its device."""
    from ..predictors.stable_diffusion import StableDiffusionPredictor

    if isinstance(predictor, StableDiffusionPredictor):
        from .lora import LoraEstimator
        return LoraEstimator(predictor, rank, int(settings.seed) + SEED_OFFSET)
    from .pixel import PixelEstimator
    channels = getattr(predictor, "sample_channels", 3)
    if channels != 3:
        raise ValueError(f"guidance.rule: 'vsd' has estimators for Stable Diffusion and for judges of RGB images; "
                         f"the {settings.kind!r} judge's samples have {channels} channels")
    size = getattr(predictor, "image_size", None)
    size = size[0] if size else settings.resolution
    return PixelEstimator(predictor.alphas_cumprod, int(size), predictor.device, int(settings.seed) + SEED_OFFSET)
