"""Stable Diffusion folders built from configs with seeded random weights: nothing to download.

The real diffusers/transformers classes and on-disk layout, so the engine loads them with
exactly the code it uses for a published model. `bench speed` builds SD 2.1-base's
architecture (the same layers, so the same cost); tiny_models.py builds the toy size the
tests use. One builder for both: the same seed gives the same bytes.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

# stabilityai/stable-diffusion-2-1-base: unet/config.json, vae/config.json, text_encoder/config.json
# (OpenCLIP ViT-H/14 text tower) and the scaled-linear noise schedule.
SD21_BASE = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, center_input_sample=False,
                 flip_sin_to_cos=True, freq_shift=0,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
                 mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
                 cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                 upcast_attention=False),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, act_fn="silu", norm_num_groups=32, sample_size=512, scaling_factor=0.18215),
    "text": dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
                 layer_norm_eps=1e-5),
}
# The toy size: the same classes, small enough for tests on two cores (16x16 latents, 32x32 images).
TINY = {
    "unet": dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                 cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=32, sample_size=32),
    "text": dict(vocab_size=None, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=77),
}
SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                 clip_sample=False, steps_offset=1, prediction_type="epsilon")
START, END = "<|startoftext|>", "<|endoftext|>"


def byte_tokenizer():
    """A CLIPTokenizer whose tokens are single bytes (no merges): the real class, no vocabulary download.

    Token ids only select rows of the text encoder's embedding; prompts are encoded once per
    run, so the tokenizer has no part in the per-iteration cost.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    for special in (START, END):
        vocab[special] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                             model_max_length=77, pad_token=END)


def clip_text_encoder(tokenizer, config: dict):
    """A CLIP text model of `config` over the tokenizer's ids (vocab_size None: the tokenizer's)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    end = tokenizer.convert_tokens_to_ids(END)
    config = dict(config, vocab_size=config["vocab_size"] or len(tokenizer))
    return CLIPTextModel(CLIPTextConfig(**config, bos_token_id=tokenizer.convert_tokens_to_ids(START),
                                        eos_token_id=end, pad_token_id=end)).eval()


def build_sd_folder(folder, shape: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write a StableDiffusionPipeline folder of `shape` (a dict like TINY) with seeded random weights.

    Parts are built and saved one at a time, so the peak host memory is one part, not three.
    The global random stream is forked: building never disturbs the caller's.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers import __version__ as diffusers_version

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = byte_tokenizer()
        tokenizer.save_pretrained(folder / "tokenizer")
        for name, build in (("text_encoder", lambda: clip_text_encoder(tokenizer, shape["text"])),
                            ("unet", lambda: UNet2DConditionModel(**shape["unet"])),
                            ("vae", lambda: AutoencoderKL(**shape["vae"]))):
            part = build()
            part.to(dtype).save_pretrained(folder / name)
            del part
        DDPMScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers_version,
             "feature_extractor": [None, None], "image_encoder": [None, None], "safety_checker": [None, None],
             "requires_safety_checker": False, "scheduler": ["diffusers", "DDPMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder
