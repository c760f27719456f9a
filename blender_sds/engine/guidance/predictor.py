"""What predicts noise: a diffusion model seen through one interface, whatever its kind.

A predictor says how images become its sample space (`encode`) and, for a noisy sample and
a timestep, returns one noise prediction per condition it is asked for ("prompt": the
prompt, per camera direction when view-dependent; "uncond": the negative or empty prompt,
CFG's other branch; "null": the empty prompt whatever the negative, as NFSD and CSD weigh
both; a `Blend` of the direction prompts). How those predictions become a gradient is a rule's
business (rules/), so a rule that needs more conditions (Perp-Neg's negatives) or none of
CFG's pair asks for them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..scene.directions import DIRECTIONS
from ..scene.views import ViewBatch
from ..settings import GuidanceSettings

CONDITIONS = ("prompt", "uncond", "null")  # the names every predictor answers


@dataclass(frozen=True, eq=False)
class Blend:
    """A condition between the direction prompts ("<prompt>, front view", ...): per judged camera,
    weights (B, len(DIRECTIONS)) over scene.directions.DIRECTIONS, summing to 1.

    Text models mix the prompts' embeddings (threestudio's Perp-Neg interpolates them so); a
    closed-form teacher mixes its direction buckets' data. One-hot rows are plain direction
    prompts. Its prediction comes back under `name`.
    """

    name: str
    weights: torch.Tensor

    @staticmethod
    def one_hot(name: str, index: torch.Tensor) -> "Blend":
        return Blend(name, torch.nn.functional.one_hot(index.long(), len(DIRECTIONS)).float())


def condition_name(condition) -> str:
    return condition.name if isinstance(condition, Blend) else condition


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

    answers_blends = False  # it can mix the direction prompts (text kinds, the pocket teacher)

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, views: ViewBatch,
                names: tuple) -> dict[str, torch.Tensor]:
        """{name: eps} for each asked condition (a name of CONDITIONS or a Blend); called under no_grad."""
        raise NotImplementedError

    def unknown(self, names) -> ValueError:
        answers = ", ".join(CONDITIONS) + (" and blends of the direction prompts" if self.answers_blends else "")
        return ValueError(f"guidance.rule: the {self.settings.kind!r} predictor has no condition "
                          f"{', '.join(repr(condition_name(n)) for n in names)}; it answers {answers}")

    def require_known(self, names) -> None:
        """Refuse a rule that asks for a condition this predictor cannot answer."""
        extra = [n for n in names if not (n in CONDITIONS if isinstance(n, str) else self.answers_blends)]
        if extra:
            raise self.unknown(extra)
