"""The reference-views teacher: the exact denoiser of a set of images with known cameras.

For a camera that is one of the views, the conditional data set is that view's image
alone, so the optimal denoiser is known in closed form: x0_hat = the image, and
eps_hat = (x_t - sqrt(a) x) / sqrt(1 - a). The unconditional model is the exact
denoiser of all views together (softmax-weighted posterior mean). Both go through the
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
from ..base import ScoreDistillation, scaled_linear_alphas_cumprod


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


class ReferenceGuidance(ScoreDistillation):
    needs_solid_background = True
    shadings = ("albedo",)  # the views are judged as they are; lit augmentation would not match them

    def __init__(self, job: dict, device: torch.device):
        super().__init__(job["guidance"], scaled_linear_alphas_cumprod(), device, job["seed"])
        self.resolution = int(job["render"]["resolution"])
        views = job["guidance"]["views"]
        colours, alphas = [], []
        for i, view in enumerate(views):
            c, a = load_view(view["image"], view["camera"], self.resolution, f"guidance.views[{i}].image")
            colours.append(c)
            alphas.append(a)
        self.colour = torch.stack(colours).to(self.device)  # (V,3,R,R) premultiplied
        self.alpha = torch.stack(alphas).to(self.device)  # (V,1,R,R)
        self.cameras = [v["camera"] for v in views]

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

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, views: ViewBatch):
        if views.view_index is None or bool((views.view_index < 0).any()):
            raise ValueError("the reference teacher judges only its views' own cameras (cameras.mode 'rig')")
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_cond = self.composite(views.view_index, views.background)
        eps_cond = (z_t - a.sqrt() * x_cond) / (1 - a).sqrt()
        if self.scale == 1.0:
            return eps_cond, eps_cond  # CFG with s = 1 is the conditional model; skip the mixture
        eps_uncond = torch.empty_like(eps_cond)
        all_views = torch.arange(self.colour.shape[0], device=self.device)
        for b in range(z_t.shape[0]):
            bg = None if views.background is None else views.background[b:b + 1].expand(all_views.shape[0], 3)
            data = self.composite(all_views, bg).flatten(1)  # (V,D)
            dist = ((z_t[b].flatten() - a[b].sqrt().flatten() * data) ** 2).sum(-1)
            weights = torch.softmax(-dist / (2 * (1 - a[b].flatten())), dim=0)
            x0 = (weights[:, None] * data).sum(0).view_as(z_t[b])
            eps_uncond[b] = (z_t[b] - a[b].sqrt() * x0) / (1 - a[b]).sqrt()
        return eps_cond, eps_uncond
