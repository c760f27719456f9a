"""Diffusers state dicts -> the original LDM (CompVis/Stability) single-file layout.

Users download Stable Diffusion as one `.safetensors`/`.ckpt` in this layout, and the
engine loads it through diffusers' `from_single_file`. To test that path without a real
checkpoint we write a tiny model in the same layout; this mapping is the inverse of
diffusers' `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` and
`convert_ldm_clip_checkpoint` for the SD 1.x/2.x UNet, the KL VAE and a CLIP text encoder.
"""
from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    layer, _, param = rest.partition(".")
    if layer not in _UNET_RESNET:
        raise KeyError(f"unexpected UNet resnet parameter {rest!r}")
    return f"{_UNET_RESNET[layer]}.{param}"


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel parameters -> `model.diffusion_model.*` keys.

    LDM numbers the encoder path as one flat list `input_blocks` (conv_in, then per down
    block `layers_per_block` (resnet, attention) pairs and a downsampler), the decoder path
    as `output_blocks` (layers_per_block + 1 pairs per up block, upsampler appended to the
    last), and the middle as resnet / attention / resnet.
    """
    per = config["layers_per_block"]
    if not isinstance(per, int):
        raise ValueError("ldm_format: only an int layers_per_block is supported")
    has_up_attention = {int(m.group(1)) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for key, value in state.items():
        top = key.rsplit(".", 1)
        if top[0] in _UNET_TOP:
            new = f"{_UNET_TOP[top[0]]}.{top[1]}"
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, part, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + block * (per + 1) + layer
            new = f"input_blocks.{index}.0.{_resnet(rest)}" if part == "resnets" else f"input_blocks.{index}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{1 + int(m[1]) * (per + 1) + per}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, part, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = block * (per + 1) + layer
            new = f"output_blocks.{index}.0.{_resnet(rest)}" if part == "resnets" else f"output_blocks.{index}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            block = int(m[1])
            slot = 2 if block in has_up_attention else 1
            new = f"output_blocks.{block * (per + 1) + per}.{slot}.conv.{m[2]}"
        else:
            raise KeyError(f"ldm_format: no LDM name for UNet parameter {key!r}")
        out[UNET_PREFIX + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """AutoencoderKL parameters -> `first_stage_model.*` keys.

    LDM counts decoder up blocks from the lowest resolution upwards (the reverse of
    diffusers), calls the shortcut `nin_shortcut`, and stores the mid-block attention
    projections as 1x1 convolutions.
    """
    blocks = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
            out[VAE_PREFIX + key] = value
            continue
        coder, rest = key.split(".", 1)
        top = rest.rsplit(".", 1)
        if top[0] in _VAE_TOP:
            new = f"{_VAE_TOP[top[0]]}.{top[1]}"
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            new = f"down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", rest):
            new = f"down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            new = f"up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", rest):
            new = f"up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d)\.(.+)", rest):
            new = f"mid.block_{int(m[1]) + 1}.{m[2].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
            new = f"mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}"
            if m[1] != "group_norm" and m[2] == "weight":
                value = value[:, :, None, None]  # linear -> 1x1 conv, as LDM stores it
        else:
            raise KeyError(f"ldm_format: no LDM name for VAE parameter {key!r}")
        out[f"{VAE_PREFIX}{coder}.{new}"] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel parameters -> `cond_stage_model.transformer.text_model.*` (SD 1.x layout)."""
    return {CLIP_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def diffusers_to_ldm(unet_state, unet_config, vae_state, vae_config, text_state) -> dict[str, torch.Tensor]:
    """One LDM checkpoint dict from the three diffusers state dicts."""
    state = {}
    state.update(unet_to_ldm(unet_state, unet_config))
    state.update(vae_to_ldm(vae_state, vae_config))
    state.update(clip_to_ldm(text_state))
    return state
