"""Tiny, randomly initialised diffusion models built from configs: no weights to download.

They have the real diffusers/transformers classes and on-disk layouts, so the engine
loads them with exactly the code it uses for Stable Diffusion 2.1 or DeepFloyd IF; only
the sizes are small enough for a 2-core CPU. Seeded, so two builds are identical.

    make_tiny_sd(folder)                        a diffusers StableDiffusionPipeline folder
    make_tiny_sd_single_file(path, config)      the same weights as one original-LDM .safetensors
    make_tiny_pixel(folder, text_encoder="clip") a pixel-space (IF-like) folder: unet/scheduler/text_encoder/tokenizer
"""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

TEXT_WIDTH = 32  # CLIP hidden size, also the UNets' cross_attention_dim
SD_LATENT_SIZE = 16  # latent side; the VAE halves, so SD images are 32x32
PIXEL_SIZE = 32


def make_tiny_tokenizer():
    """A byte-level CLIPTokenizer with no merges: every character is its own token."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                             model_max_length=77, pad_token="<|endoftext|>")


def make_tiny_text_encoder(tokenizer, kind: str = "clip"):
    """A 2-layer CLIP text model, or a T5 encoder (what DeepFloyd IF uses) over the same tokens."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if kind == "t5":
        config = T5Config(vocab_size=len(tokenizer), d_model=TEXT_WIDTH, d_kv=8, num_heads=4, num_layers=2,
                          d_ff=37, pad_token_id=end, eos_token_id=end, decoder_start_token_id=end)
        return T5EncoderModel(config).eval()
    if kind != "clip":
        raise ValueError(f"text encoder kind must be 'clip' or 't5', got {kind!r}")
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                            eos_token_id=end, pad_token_id=end)
    return CLIPTextModel(config).eval()


def _tiny_unet(channels: int, out_channels: int, sample_size: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=channels, out_channels=out_channels,
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32)


@contextmanager
def _seeded(seed: int):
    """A forked, seeded global RNG: building a model never disturbs the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_tiny_sd(folder, seed: int = 0) -> Path:
    """A StableDiffusionPipeline folder (SD 1.x layout: CLIP text encoder, 4-channel latents)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline

    folder = Path(folder)
    with _seeded(seed):
        tokenizer = make_tiny_tokenizer()
        text_encoder = make_tiny_text_encoder(tokenizer)
        unet = _tiny_unet(4, 4, SD_LATENT_SIZE)
        vae = AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            norm_num_groups=32, sample_size=2 * SD_LATENT_SIZE)
        scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


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
    from diffusers import DDPMScheduler

    folder = Path(folder)
    with _seeded(seed):
        tokenizer = make_tiny_tokenizer()
        encoder = make_tiny_text_encoder(tokenizer, text_encoder)
        unet = _tiny_unet(3, 6, PIXEL_SIZE)
        scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                                  clip_sample=False, steps_offset=1)
    tokenizer.save_pretrained(folder / "tokenizer")
    encoder.save_pretrained(folder / "text_encoder")
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    return folder
