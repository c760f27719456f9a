"""Styles the pocket world can draw: its images made blurry, oversaturated, dull, dark or noisy.

NFSD and CSD steer away from negative prompts that describe how an image looks ("blurry, dull,
dark", "oversaturated color, noisy"), not what it shows. A text-to-image model answers them
from the bad photos it was trained on; the pocket world's honest counterpart is its own data
with the named defect applied, so a negative of styles is answered with the world's
unconditional images so degraded (pocket_words.STYLES has the phrases). Each defect is a fixed,
deterministic function of an image, applied to the object only (premultiplied colour and
alpha), since the background is the judged render's, told to the teacher per view:

- blurry: area-downsampled by BLUR_FACTOR and bilinearly upsampled (colour and alpha alike;
  on premultiplied RGBA that is exactly the composite blurred, whatever the background);
- oversaturated: HSV saturation S -> min(1, SATURATION_GAIN * S), hue and value kept;
- dull: colour mixed DULL_MIX of the way toward mid grey;
- dark: colour (HSV value) scaled by DARK_VALUE;
- noisy: Gaussian noise of NOISE_STD from a fixed seed, on the object's pixels.

Several apply in pocket_words.STYLES order, whatever order the prompt lists them in.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ...pocket_words import STYLES
from .dataset import ViewSet

BLUR_FACTOR = 4  # an image of S px holds S/4 px of detail
SATURATION_GAIN = 1.6
DULL_MIX = 0.5
GREY = 0.5
DARK_VALUE = 0.5
NOISE_STD = 0.1
NOISE_SEED = 20231030  # the same noise for every call: a style, not a random stream of the teacher's


def blurry(rgba: torch.Tensor) -> torch.Tensor:
    size = rgba.shape[-2:]
    low = [max(1, s // BLUR_FACTOR) for s in size]
    return F.interpolate(F.interpolate(rgba, size=low, mode="area"), size=size, mode="bilinear", align_corners=False)


def _straight(rgba: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(colour, alpha) with colour un-premultiplied (0 where the image is empty)."""
    alpha = rgba[:, 3:]
    return torch.where(alpha > 0, rgba[:, :3] / alpha.clamp_min(1e-8), 0.0).clamp(0, 1), alpha


def oversaturated(rgba: torch.Tensor) -> torch.Tensor:
    rgb, alpha = _straight(rgba)
    value = rgb.amax(1, keepdim=True)
    saturation = (value - rgb.amin(1, keepdim=True)) / value.clamp_min(1e-8)
    # Each channel's distance below the value scales with S: hue and value stay, S becomes min(1, gain S).
    gain = torch.where(saturation > 0, (SATURATION_GAIN * saturation).clamp(max=1) / saturation.clamp_min(1e-8), 1.0)
    rgb = (value - gain * (value - rgb)).clamp(0, 1)
    return torch.cat((rgb * alpha, alpha), 1)


def dull(rgba: torch.Tensor) -> torch.Tensor:
    colour, alpha = rgba[:, :3], rgba[:, 3:]
    return torch.cat(((1 - DULL_MIX) * colour + DULL_MIX * GREY * alpha, alpha), 1)


def dark(rgba: torch.Tensor) -> torch.Tensor:
    return torch.cat((DARK_VALUE * rgba[:, :3], rgba[:, 3:]), 1)


def noisy(rgba: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(NOISE_SEED)
    noise = torch.randn(rgba[:, :3].shape, generator=generator, dtype=torch.float32).to(rgba.device, rgba.dtype)
    colour, alpha = rgba[:, :3], rgba[:, 3:]
    return torch.cat(((colour + NOISE_STD * noise * alpha).clamp(min=0).minimum(alpha), alpha), 1)


DEGRADE = {"blurry": blurry, "oversaturated": oversaturated, "dull": dull, "dark": dark, "noisy": noisy}
if tuple(DEGRADE) != tuple(STYLES):
    raise ImportError("pocket styles: the vocabulary (blender_sds/pocket_words.py) and the world disagree")


def apply(rgba: torch.Tensor, styles) -> torch.Tensor:
    """Premultiplied RGBA images (N,4,H,W) in [0,1] with the named styles applied, in STYLES order."""
    unknown = [s for s in styles if s not in DEGRADE]
    if unknown:
        raise ValueError(f"negative_prompt: the pocket world draws no style {', '.join(map(repr, unknown))}; "
                         f"it knows {', '.join(DEGRADE)}")
    for name in DEGRADE:
        if name in styles:
            rgba = DEGRADE[name](rgba)
    return rgba


def restyled(data: ViewSet, styles) -> ViewSet:
    """The same views (cameras, objects, priors) with their images in the named styles."""
    if not styles:
        return data
    n, s = len(data), data.size
    rgba = torch.cat((data.colour.view(n, 3, s, s), data.alpha.view(n, 1, s, s)), 1)
    rgba = apply(rgba, styles)
    colour = rgba[:, :3].reshape(n, 3 * s * s).contiguous()
    alpha = rgba[:, 3].reshape(n, s * s).contiguous()
    # The sums the teacher's distance expansion needs, as ViewSet.from_rgba makes them.
    per_channel = colour.view(n, 3, s * s)
    return replace(data, colour=colour, alpha=alpha, colour_sq=(colour.double() ** 2).sum(-1).to(colour.dtype),
                   colour_alpha=(per_channel.double() * alpha.double()[:, None]).sum(-1).to(colour.dtype),
                   alpha_sq=(alpha.double() ** 2).sum(-1).to(colour.dtype))
