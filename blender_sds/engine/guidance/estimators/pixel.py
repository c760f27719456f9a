"""VSD's estimator for pixel-space judges (the pocket teacher, kind "pixel", the reference views):
a small camera-conditioned denoiser trained on the renders, on top of the judge's own guess.

These judges have no UNet to put a LoRA on (the pocket and reference teachers are closed
forms), and a LoRA of a 64 px text model would still cost its full UNet per pass, so the
renders' own model is a diffusers `UNet2DModel` sized for 32-64 px images: three levels
(16, 32, 32 channels), one ResNet block each, no attention, the camera's 16 numbers through
an MLP into the time embedding (`class_embed_type="identity"`). No text: a run has one
prompt, so the estimator is of that prompt's renders already. Its size is the pocket preset's
budget: at (32, 64, 64) with attention its passes cost about as much as a whole SDS step on a
CPU (a 900-step asset would pass 2 minutes); at this size about 0.4 of one.

It is a denoiser in EDM's preconditioning (Karras et al. 2022), with x = x_t / sqrt(a) = x0 + sigma eps,
anchored on the judge as a LoRA is (its UNet *is* the judge, so it starts as the judge):

    x0_phi = c_skip x + (1 - c_skip) x0_judge + c_out F(c_in x, t, camera),
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),  sd = 0.5,

where x0_judge = x - sigma eps_judge is the judge's own denoised guess for the prompt at the same
sample (the rule's `base`), and eps_phi = (x - x0_phi) / sigma. F's last layer is zeroed, so the
estimator starts as the judge where the noise is large (its eps is the judge's prompt eps: VSD's
gradient starts as eps_pre - eps_prompt, as threestudio's LoRA starts it) and as the render
itself where the noise is small (there the render's own detail passes through). F then learns
what the renders are that the judge's guess is not. Its loss is EDM's, ||F - target||^2 with
target = (x0 - c_skip x - (1 - c_skip) x0_judge) / c_out, of order one at every t (the
render's own share, c_skip x, is what keeps it bounded where sigma is small).
Started from nothing instead (x0_judge replaced by 0, the Gaussian prior of grey renders) it
learned too little in a run: its loss stayed near its starting 1 (0.2-0.65 anchored), and the
colours it left came back washed out (docs/QUALITY.md "Saturation").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import CAMERA_SIZE, NoiseEstimator, copy_into

CHANNELS = (16, 32, 32)  # one downsampling between levels: 32 px -> 16 -> 8
SIGMA_DATA = 0.5  # EDM's spread of images in [-1, 1]
MULTIPLE = 2 ** (len(CHANNELS) - 1)  # image sides are padded to this


def build_network(size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the UNet2DModel F, its last layer zeroed; the camera MLP into its time embedding)."""
    from diffusers import UNet2DModel

    net = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=CHANNELS,
                      layers_per_block=1, down_block_types=("DownBlock2D",) * len(CHANNELS),
                      up_block_types=("UpBlock2D",) * len(CHANNELS), norm_num_groups=8,
                      add_attention=False, class_embed_type="identity")
    torch.nn.init.zeros_(net.conv_out.weight)
    torch.nn.init.zeros_(net.conv_out.bias)
    width = CHANNELS[0] * 4  # UNet2DModel's time_embed_dim
    camera = torch.nn.Sequential(torch.nn.Linear(CAMERA_SIZE, width), torch.nn.SiLU(), torch.nn.Linear(width, width))
    return net, camera


class PixelEstimator(NoiseEstimator):
    """eps_phi of a pixel-space run's renders (samples in [-1, 1], 3 channels); see the module docstring."""

    anchored = True

    def __init__(self, alphas_cumprod: torch.Tensor, size: int, device: torch.device, seed: int):
        with torch.random.fork_rng(devices=[]):  # the same start for the same seed, the run's stream untouched
            torch.manual_seed(seed)
            net, camera = build_network(size)
        self.net = net.to(device)  # float32 as built, whatever the judge's dtype
        self.camera = camera.to(device)
        self.alphas_cumprod = alphas_cumprod

    def network(self, x: torch.Tensor, t: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """F(x, t, camera), padded to the UNet's multiple and cropped back."""
        height, width = x.shape[-2:]
        pad = (0, -width % MULTIPLE, 0, -height % MULTIPLE)
        x = F.pad(x, pad, mode="replicate") if any(pad) else x
        out = self.net(x, t, class_labels=self.camera(camera.to(x.device, torch.float32))).sample
        return out[..., :height, :width]

    def scalings(self, t: torch.Tensor):
        """(sigma, c_skip, c_out, c_in) at t, shaped (B,1,1,1)."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        sigma = ((1 - a) / a).sqrt()
        spread = (sigma ** 2 + SIGMA_DATA ** 2).sqrt()
        return sigma, SIGMA_DATA ** 2 / spread ** 2, sigma * SIGMA_DATA / spread, 1 / spread

    @staticmethod
    def skip(x, sigma, c_skip, base):
        """The part of x0_phi that F does not give: the render and the judge's guess, by noise level."""
        if base is None:
            raise ValueError("the pixel estimator needs the judge's prompt prediction (base)")
        return c_skip * x + (1 - c_skip) * (x - sigma * base.float())

    def predict(self, z_t, t, camera, base=None):
        sigma, c_skip, c_out, c_in = self.scalings(t)
        x = z_t.float() / (1 + sigma ** 2).sqrt()  # x_t / sqrt(a): sqrt(a) = 1 / sqrt(1 + sigma^2)
        x0 = self.skip(x, sigma, c_skip, base) + c_out * self.network(c_in * x, t, camera)
        return (x - x0) / sigma

    def loss(self, z, t, noise, camera, base=None):
        sigma, c_skip, c_out, c_in = self.scalings(t)
        x = z.float() + sigma * noise.float()  # = x_t / sqrt(a) for x_t = sqrt(a) z + sqrt(1-a) noise
        target = (z.float() - self.skip(x, sigma, c_skip, base)) / c_out
        return (self.network(c_in * x, t, camera) - target).pow(2).mean()

    def named(self) -> dict[str, torch.nn.Parameter]:
        return {**{f"net.{k}": p for k, p in self.net.named_parameters()},
                **{f"camera.{k}": p for k, p in self.camera.named_parameters()}}

    def parameters(self):
        return list(self.named().values())

    def state_dict(self):
        return {name: p.detach() for name, p in self.named().items()}

    def load_state_dict(self, state):
        copy_into(self.named(), state)
