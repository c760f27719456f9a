"""The reference-views teacher: the exact denoiser of a set of images with known cameras.

For a camera that is one of the views, the conditional data set is that view's image
alone, so the optimal denoiser is known in closed form: x0_hat = the image, and
eps_hat = (x_t - sqrt(a) x) / sqrt(1 - a). The unconditional model is the exact
denoiser of all views together (the posterior mean, closed_form.py). Both go through the
same noise, timestep, weighting and CFG code as Stable Diffusion, so SDS driven by this
teacher must reconstruct a known object: the project's ground-truth test of the whole
engine. RGBA views are composited on the same random solid background as the render,
which pins the silhouette down.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...scene.cameras import crop_box
from ...scene.views import ViewBatch
from ...settings import GuidanceSettings
from ..predictor import NoisePredictor
from .closed_form import ImageSet, epsilon, posterior_mean, scaled_linear_alphas_cumprod


def load_view(path: str, camera: dict, resolution: int, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Premultiplied sRGB (3,R,R) and alpha (1,R,R) of a view, cropped like its camera."""
    try:
        with Image.open(path) as im:
            im.load()
            size = im.size
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise ValueError(f"{key}: cannot read image {path!r}: {exc}") from exc
    if size != (camera["width"], camera["height"]):
        raise ValueError(f"{key}: image is {size[0]}x{size[1]} but its camera is "
                         f"{camera['width']}x{camera['height']}")
    left, top, right, bottom = crop_box(camera)
    t = torch.from_numpy(rgba[top:bottom, left:right]).permute(2, 0, 1)
    t = torch.cat([t[:3] * t[3:], t[3:]])  # premultiply before resampling: no dark fringes
    t = F.interpolate(t[None], size=(resolution, resolution), mode="area")[0] if t.shape[-1] != resolution else t
    return t[:3], t[3:]


class ReferencePredictor(NoisePredictor):
    needs_solid_background = True
    shadings = ("albedo",)  # the views are judged as they are; lit augmentation would not match them

    def __init__(self, settings: GuidanceSettings, device: torch.device):
        super().__init__(settings, scaled_linear_alphas_cumprod(), device)
        self.resolution = settings.resolution
        views = settings.views
        colours, alphas = [], []
        for i, view in enumerate(views):
            c, a = load_view(view["image"], view["camera"], self.resolution, f"guidance.views[{i}].image")
            colours.append(c)
            alphas.append(a)
        self.colour = torch.stack(colours).to(self.device)  # (V,3,R,R) premultiplied
        self.alpha = torch.stack(alphas).to(self.device)  # (V,1,R,R)
        self.data = ImageSet.from_premultiplied(self.colour, self.alpha)
        self.rig = [v["camera"] for v in views]  # it judges only from its views' cameras

    def composite(self, index: torch.Tensor, background: torch.Tensor | None) -> torch.Tensor:
        """Views `index` on per-image backgrounds (B,3), in [-1,1]."""
        bg = torch.ones(index.shape[0], 3, device=self.device) if background is None else background
        x = self.colour[index] + (1 - self.alpha[index]) * bg.view(-1, 3, 1, 1)
        return x * 2 - 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images * 2 - 1

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, views: ViewBatch, names):
        self.require_known(names)
        if views.view_index is None or bool((views.view_index < 0).any()):
            raise ValueError("the reference teacher judges only its views' own cameras (cameras.mode 'rig')")
        a = self.alphas_cumprod[t]
        out = {}
        if "prompt" in names:
            out["prompt"] = epsilon(z_t, self.composite(views.view_index, views.background), a)
        unconditional = [name for name in ("uncond", "null") if name in names]  # it has no prompt: one and the same
        if unconditional:
            bg = views.background if views.background is not None else torch.ones(z_t.shape[0], 3)
            eps = epsilon(z_t, posterior_mean(z_t, a, self.data, bg.to(self.device, z_t.dtype)), a)
            out.update({name: eps for name in unconditional})
        return out
