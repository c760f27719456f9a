"""Latent Stable Diffusion (1.x / 2.x) as the 2D judge, through diffusers.

Renders are encoded by the VAE (the only part that carries gradients), judged in latent
space by the frozen UNet, and the distillation gradient flows back through the encoder
to the pixels. Weights are fp16 on CUDA and fp32 on the CPU (engine/device.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ...device import weight_dtype
from .model_source import (HUB_ERRORS, ModelSourceError, classify, diffusers_dtype, fetch_config_folder,
                           fetch_pipeline_folder, hub_offline, require_parts, single_file_keys)
from ...settings import GuidanceSettings
from . import weights_cache
from .text_unet import TextConditionedPredictor, place_module

SD_FOLDER_PARTS = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder", "tokenizer", "scheduler")
UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")  # never loaded nor downloaded
_SKIP = {name: None for name in UNUSED_COMPONENTS}
DEFAULT_LATENT_SIZE = 64  # SD 1.x / 2.x-base train at 512 px = 64 latents; used when a config omits it


def _check_sd_folder(folder: Path, key: str = "guidance.model") -> None:
    require_parts(folder, SD_FOLDER_PARTS, "a diffusers Stable Diffusion folder", key)
    index = json.loads((folder / "model_index.json").read_text())
    if "text_encoder_2" in index:
        raise ModelSourceError(f"{key}: {str(folder)!r} is a {index.get('_class_name', 'two-text-encoder')} "
                               f"model (SDXL-like); stable-diffusion guidance supports SD 1.x and 2.x")


def _pipeline_from_folder(folder: Path, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    _check_sd_folder(folder)
    try:
        return StableDiffusionPipeline.from_pretrained(folder, **diffusers_dtype(dtype), **_SKIP,
                                                       requires_safety_checker=False)
    except (*HUB_ERRORS, ValueError) as error:
        raise ModelSourceError(f"guidance.model: could not load the diffusers folder {str(folder)!r} "
                               f"({type(error).__name__}: {error})") from error


def _config_folder(config: str | None) -> str | None:
    """guidance.config (a diffusers folder or hub id giving a single file its configs) as a local folder."""
    if not config:
        return None
    source = classify(config, key="guidance.config")
    if source.kind == "single_file":
        raise ModelSourceError("guidance.config: must be a diffusers folder or hub id holding the model's "
                               f"configs, not a checkpoint file ({config!r})")
    folder = Path(source.location) if source.kind == "folder" else fetch_config_folder(source.location)
    require_parts(folder, ("model_index.json", "unet/config.json", "vae/config.json"),
                  "a diffusers Stable Diffusion config folder", key="guidance.config")
    return str(folder)


def _pipeline_from_single_file(path: Path, config: str | None, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    keys = single_file_keys(path)
    if keys is not None and not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelSourceError(f"guidance.model: {str(path)!r} is not a Stable Diffusion checkpoint "
                               f"(no model.diffusion_model.* UNet weights)")
    config_folder = _config_folder(config)
    try:
        return StableDiffusionPipeline.from_single_file(
            str(path), config=config_folder, **diffusers_dtype(dtype), local_files_only=hub_offline(),
            requires_safety_checker=False, **_SKIP)
    except (*HUB_ERRORS, ValueError, KeyError, RuntimeError) as error:
        cause = f"({type(error).__name__}: {error})"
        if config_folder is None and isinstance(error, HUB_ERRORS):
            why = "downloads are off (HF_HUB_OFFLINE=1)" if hub_offline() else "they could not be downloaded"
            raise ModelSourceError(
                f"guidance.model: the single-file checkpoint {str(path)!r} takes its architecture from the "
                f"diffusers configs of its model family, which are not cached and {why}. Set guidance.config "
                f"to a local diffusers folder (or a cached hub id) of the same family, e.g. "
                f"stabilityai/stable-diffusion-2-1-base for SD 2.x-base, or run once with network access "
                f"{cause}") from error
        raise ModelSourceError(f"guidance.model: could not load the single-file checkpoint {str(path)!r} with "
                               f"the configs of {config or 'its model family'}: is guidance.config the same "
                               f"model family as the checkpoint? {cause}") from error


def load_stable_diffusion(model: str, config: str | None, dtype: torch.dtype) -> dict:
    """unet, vae, tokenizer, text_encoder and scheduler_config from whatever guidance.model names."""
    source = classify(model)
    if source.kind == "single_file":
        pipe = _pipeline_from_single_file(Path(source.location), config, dtype)
    else:
        folder = Path(source.location) if source.kind == "folder" else fetch_pipeline_folder(
            source.location, skip=UNUSED_COMPONENTS)
        pipe = _pipeline_from_folder(folder, dtype)
    parts = {"unet": pipe.unet, "vae": pipe.vae, "tokenizer": pipe.tokenizer, "text_encoder": pipe.text_encoder,
             "scheduler_config": pipe.scheduler.config}
    del pipe  # the pipeline would keep the text encoder alive
    for name in ("unet", "vae", "text_encoder"):
        meta = [n for n, p in parts[name].named_parameters() if p.is_meta]
        if meta:
            raise ModelSourceError(f"guidance.model: {source.location!r} has no weights for {len(meta)} "
                                   f"{name} parameters (e.g. {meta[0]}); is it the model family its config says?")
    channels = parts["unet"].config.in_channels
    if channels != parts["vae"].config.latent_channels:
        raise ModelSourceError(f"guidance.model: the UNet takes {channels} input channels but the VAE makes "
                               f"{parts['vae'].config.latent_channels}: an inpainting or depth model? SDS "
                               f"needs a text-to-image model")
    return parts


def _place_vae(vae, device: torch.device, low_vram: bool):
    """The encoder (small, and the only part with gradients) always sits on `device`; in low-VRAM
    mode the decoder, never used by SDS, is offloaded to the CPU."""
    for part, offload in ((vae.encoder, False), (vae.quant_conv, False), (vae.decoder, low_vram),
                          (vae.post_quant_conv, low_vram)):
        if part is not None:  # quant convs are optional (use_quant_conv=False)
            place_module(part, device, offload, channels_last=True)
    vae.requires_grad_(False)
    vae.eval()
    return vae


class StableDiffusionPredictor(TextConditionedPredictor):
    """SDS with a latent Stable Diffusion model.

    Attributes for tests and benchmarks: `unet`, `vae`, `scheduler` (a DDPMScheduler built
    from the model's scheduler config: the training noise schedule) and `embeddings`
    (PromptEmbeddings: prompt, negative prompt, and the four view prompts).
    """

    def __init__(self, settings: GuidanceSettings, device: torch.device):
        device = torch.device(device)
        dtype = weight_dtype(settings.dtype, device)
        parts = weights_cache.load(("stable-diffusion", settings.model, settings.config, str(dtype), str(device)),
                                   lambda: load_stable_diffusion(settings.model, settings.config, dtype),
                                   keep=not settings.low_vram)
        super().__init__(settings, device, parts.pop("unet"), parts.pop("scheduler_config"), dtype)
        self.vae = _place_vae(parts.pop("vae"), self.device, self.low_vram)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        latent = self.unet.config.sample_size or DEFAULT_LATENT_SIZE
        latent = (latent, latent) if isinstance(latent, int) else tuple(latent)
        self.image_size = (latent[0] * vae_scale, latent[1] * vae_scale)  # 512x512 for SD 2.1-base
        self.cache_embeddings(parts)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> scaled latents (B,4,h,w), fp32, differentiable.

        The posterior mean, not a sample: the VAE's posterior is narrow, so the mean is what
        a sample would be up to noise SDS adds anyway, and a deterministic encode makes the
        gradient a function of the image alone (reproducible, and checkable in tests).
        """
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        x = (images * 2 - 1).to(self.dtype)
        latents = self.vae.encode(x).latent_dist.mean * self.scaling_factor
        return latents.float()
