"""Pixel-space diffusion (DeepFloyd-IF-like) as the 2D judge: no VAE between render and model.

The model is a diffusers folder (or hub repo) with `unet` (3 input channels; 3 or 6 output
channels, the latter with learned variance), `scheduler`, `text_encoder` and `tokenizer`.
The text side is loaded with transformers' Auto classes, so a CLIP or a T5 encoder both work.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...device import weight_dtype
from .model_source import (HUB_ERRORS, ModelSourceError, classify, diffusers_dtype, fetch_pipeline_folder,
                           require_parts)
from ...settings import GuidanceSettings
from . import weights_cache
from .text_unet import TextConditionedPredictor

PIXEL_FOLDER_PARTS = ("unet/config.json", "scheduler", "text_encoder/config.json", "tokenizer")
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "watermarker")


def load_pixel_model(model: str, dtype: torch.dtype) -> dict:
    """unet, tokenizer, text_encoder and scheduler_config from a pixel-space diffusers folder or hub repo."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoModelForTextEncoding, AutoTokenizer

    source = classify(model)
    if source.kind == "single_file":
        raise ModelSourceError(f"guidance.model: {source.location!r} is a single-file checkpoint; pixel guidance "
                               f"needs a diffusers folder or hub id (unet/, scheduler/, text_encoder/, tokenizer/)")
    folder = Path(source.location) if source.kind == "folder" else fetch_pipeline_folder(
        source.location, skip=UNUSED_COMPONENTS, single_file_ok=False)
    require_parts(folder, PIXEL_FOLDER_PARTS, "a pixel-space diffusers model")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **diffusers_dtype(dtype))
        scheduler_config = DDPMScheduler.load_config(folder, subfolder="scheduler")
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        text_encoder = AutoModelForTextEncoding.from_pretrained(folder / "text_encoder", dtype=dtype)
    except (*HUB_ERRORS, ValueError) as error:
        raise ModelSourceError(f"guidance.model: could not load the pixel-space model in {str(folder)!r} "
                               f"({type(error).__name__}: {error})") from error
    channels = unet.config.in_channels
    if channels != 3 or unet.config.out_channels not in (3, 6):
        raise ModelSourceError(f"guidance.model: the UNet in {str(folder)!r} maps {channels} to "
                               f"{unet.config.out_channels} channels; pixel guidance needs RGB in and "
                               f"3 (or 6, learned variance) out. Latent models use kind 'stable-diffusion'")
    return {"unet": unet, "tokenizer": tokenizer, "text_encoder": text_encoder, "scheduler_config": scheduler_config}


class PixelPredictor(TextConditionedPredictor):
    """SDS with a pixel-space model: the sample is the image itself, resized and mapped to [-1, 1].

    Attributes: `unet`, `scheduler`, `embeddings`, `image_size` (the UNet's sample size).
    """

    def __init__(self, settings: GuidanceSettings, device: torch.device):
        device = torch.device(device)
        dtype = weight_dtype(settings.dtype, device)
        parts = weights_cache.load(("pixel", settings.model, None, str(dtype), str(device)),
                                   lambda: load_pixel_model(settings.model, dtype), keep=not settings.low_vram)
        super().__init__(settings, device, parts.pop("unet"), parts.pop("scheduler_config"), dtype)
        size = self.unet.config.sample_size or 64  # IF stage I works at 64x64
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.cache_embeddings(parts)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        return (images * 2 - 1).float()
