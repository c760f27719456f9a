"""Tiny, randomly initialised diffusion models built from configs: no weights to download.

They have the real diffusers/transformers classes and on-disk layouts, so the engine
loads them with exactly the code it uses for Stable Diffusion 2.1 or DeepFloyd IF; only
the sizes are small enough for a 2-core CPU. Seeded, so two builds are identical. The
Stable Diffusion folder comes from the builder `bench speed` uses too (models.py).

    make_tiny_sd(folder)                        a diffusers StableDiffusionPipeline folder
    make_tiny_sd_single_file(path, config)      the same weights as one original-LDM .safetensors
    make_tiny_pixel(folder, text_encoder="clip") a pixel-space (IF-like) folder: unet/scheduler/text_encoder/tokenizer
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import models

PIXEL_SIZE = 32


def make_tiny_sd(folder, seed: int = 0) -> Path:
    """A StableDiffusionPipeline folder (SD 1.x layout: CLIP text encoder, 4-channel latents)."""
    return models.build_sd_folder(folder, models.TINY, seed)


def make_tiny_sd_single_file(path, config_folder) -> Path:
    """The weights of the diffusers folder `config_folder` as one original-LDM `.safetensors`.

    Written in the layout of the CompVis/Stability checkpoints (`model.diffusion_model.*`,
    `first_stage_model.*`, `cond_stage_model.transformer.*`), so loading it goes through
    diffusers' real single-file conversion.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from .ldm_format import diffusers_to_ldm

    config_folder, path = Path(config_folder), Path(path)
    unet = UNet2DConditionModel.from_pretrained(config_folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(config_folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(config_folder / "text_encoder")
    state = diffusers_to_ldm(unet.state_dict(), dict(unet.config), vae.state_dict(), dict(vae.config),
                             text_encoder.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def make_tiny_pixel(folder, seed: int = 0, text_encoder: str = "clip") -> Path:
    """A pixel-space folder shaped like DeepFloyd IF stage I: 3-channel UNet with learned
    variance (6 output channels), a cosine DDPM scheduler, a tokenizer and a text encoder
    ("clip", or "t5" as IF has)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    if text_encoder not in ("clip", "t5"):
        raise ValueError(f"text encoder kind must be 'clip' or 't5', got {text_encoder!r}")
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = models.byte_tokenizer()
        encoder = _t5_encoder(tokenizer) if text_encoder == "t5" else models.clip_text_encoder(
            tokenizer, models.TINY["text"])
        unet = UNet2DConditionModel(**dict(models.TINY["unet"], sample_size=PIXEL_SIZE, in_channels=3,
                                           out_channels=6))
        scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                                  clip_sample=False, steps_offset=1)
    tokenizer.save_pretrained(folder / "tokenizer")
    encoder.save_pretrained(folder / "text_encoder")
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def _t5_encoder(tokenizer):
    """A 2-layer T5 encoder (what DeepFloyd IF uses) over the byte tokenizer's ids."""
    from transformers import T5Config, T5EncoderModel

    end = tokenizer.convert_tokens_to_ids(models.END)
    config = T5Config(vocab_size=len(tokenizer), d_model=models.TINY["text"]["hidden_size"], d_kv=8, num_heads=4,
                      num_layers=2, d_ff=37, pad_token_id=end, eos_token_id=end, decoder_start_token_id=end)
    return T5EncoderModel(config).eval()
