"""What predicts noise: a diffusion model seen through one interface, whatever its kind.

A predictor says how images become its sample space (`encode`) and, for a noisy sample and
a timestep, returns one noise prediction per named condition it is asked for ("prompt":
the prompt, per camera direction when view-dependent; "uncond": the negative or empty
prompt). How those predictions become a gradient is a rule's business (rules/), so a rule
that needs more conditions (Perp-Neg's negatives) or none of CFG's pair asks for them by name.
"""
from __future__ import annotations

import torch

from ..scene.views import ViewBatch
from ..settings import GuidanceSettings

CONDITIONS = ("prompt", "uncond")  # the names every predictor answers


class NoisePredictor:
    needs_solid_background = False  # a kind whose targets need to know the background says so
    # The shadings this judge has seen images like; the engine renders no other for it.
    shadings: tuple[str, ...] = ("albedo", "textureless", "lambertian")
    graphable = False  # its UNet and encoder may be replayed from CUDA graphs (guidance.cuda_graphs)
    low_vram = False
    rig: list[dict] | None = None  # cameras the kind judges from instead of the job's rig (reference views)

    def __init__(self, settings: GuidanceSettings, alphas_cumprod: torch.Tensor, device):
        self.settings = settings
        self.device = torch.device(device)
        self.alphas_cumprod = alphas_cumprod.to(self.device, torch.float32)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [0,1] -> samples z, differentiably."""
        raise NotImplementedError

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, views: ViewBatch,
                names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """{name: eps} for each asked condition; called under no_grad."""
        raise NotImplementedError

    def unknown(self, names) -> ValueError:
        return ValueError(f"guidance.rule: the {self.settings.kind!r} predictor has no condition "
                          f"{', '.join(repr(n) for n in names)}; it answers {', '.join(CONDITIONS)}")

    def require_known(self, names) -> None:
        """Refuse a rule that asks for a condition this predictor cannot answer."""
        extra = [name for name in names if name not in CONDITIONS]
        if extra:
            raise self.unknown(extra)
