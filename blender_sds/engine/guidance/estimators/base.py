"""What every estimator of the renders' own noise is, and how it trains with the scene.

VSD (ProlificDreamer) replaces SDS's sampled noise by eps_phi(x_t, t, camera): the noise
prediction of a diffusion model of the *current renders*, fitted online. An estimator answers
`predict` (for the gradient, under no_grad) and `loss` (the diffusion loss that fits it, on
detached samples), and names its trainable tensors; `EstimatorPart` hands those to the run's
Adam and its checkpoint, so refine and resume continue it like the field.

The camera is c2w flattened (16 numbers, threestudio's `camera_condition_type="extrinsics"`),
with the eye made relative to the job's bounds (centre subtracted, divided by size): the same
orbit then reads the same whatever the scene's placement in Blender. The zero vector is the
camera-free condition (threestudio zeroes the condition for its dropout and its camera-free
pass), which each estimator's camera embedding maps to a learned null.
"""
from __future__ import annotations

import torch

from ...scene.views import ViewBatch
from ...settings import Bounds
from ...train.parts import TrainedPart

CAMERA_SIZE = 16  # c2w, 4x4 flattened


def camera_vector(views: ViewBatch, bounds: Bounds) -> torch.Tensor:
    """(B, 16) float32: each camera's c2w with its eye relative to the bounds, flattened row by row."""
    c2w = views.c2w.to(torch.float32).clone()
    center = torch.tensor(bounds.center, dtype=torch.float32, device=c2w.device)
    c2w[:, :3, 3] = (c2w[:, :3, 3] - center) / float(bounds.size)
    return c2w.reshape(c2w.shape[0], CAMERA_SIZE)


class NoiseEstimator:
    """eps_phi(x_t, t, camera) of one run's renders; `camera` (B, 16), zeros for camera-free.

    An `anchored` estimator builds on the judge: `base` is the judge's own noise prediction for
    the prompt at the same noisy sample (B, C, H, W), which the rule passes to both calls. A LoRA
    needs none (its UNet is the judge).
    """

    anchored = False

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, camera: torch.Tensor,
                base: torch.Tensor | None = None) -> torch.Tensor:
        """The estimated noise in z_t (float32, like z_t); the rule calls it under no_grad."""
        raise NotImplementedError

    def loss(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, camera: torch.Tensor,
             base: torch.Tensor | None = None) -> torch.Tensor:
        """The diffusion loss of clean samples z (detached) noised by `noise` at t: its gradient
        reaches the estimator's own tensors only."""
        raise NotImplementedError

    def parameters(self) -> list[torch.nn.Parameter]:
        """What trains, in a fixed order (the optimiser's state is saved by position)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


def copy_into(params: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    """Load saved tensors into named parameters in place (the optimiser keeps its references)."""
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))


class EstimatorPart(TrainedPart):
    """The estimator as a trained part: its own learning rate (guidance.estimator.lr) in the run's
    Adam, and its state in the checkpoint under "estimator". Its loss comes with the judge's
    (GuidanceOutput.loss), which is computed where the estimator's training sample is."""

    name = "estimator"

    def __init__(self, estimator: NoiseEstimator, lr: float):
        self.estimator = estimator
        self.lr = float(lr)

    def parameter_groups(self) -> list[dict]:
        return [{"params": self.estimator.parameters(), "lr": self.lr}]

    def state_dict(self) -> dict:
        return self.estimator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.estimator.load_state_dict(state)
