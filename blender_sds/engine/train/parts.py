"""The things a run trains, each saying what it adds to the loop.

A trained part contributes its optimiser groups, its losses by name (already weighted by
the job's optim section) and its state to the checkpoint. The loop knows parts, not
fields: a judge with its own network (VSD's LoRA) joins by returning a part from
`ScoreDistillation.trained_parts`, and refine and resume then restore it with the rest.
"""
from __future__ import annotations

import torch

from ..scene.field import Field
from ..scene.renderer import Background
from ..settings import LossWeights

BACKGROUND_LR = 1e-3


class TrainedPart:
    name = ""

    def parameter_groups(self) -> list[dict]:
        raise NotImplementedError

    def losses(self, rendered) -> dict[str, torch.Tensor]:
        """Weighted losses by name for this step's render (the renderer's output)."""
        return {}

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class FieldPart(TrainedPart):
    """The density and colour field, with the render regularisers that shape it."""

    name = "field"
    REGULARISERS = ("orientation", "sparsity", "opaque")

    def __init__(self, field: Field, lr: float, weights: LossWeights):
        self.field = field
        self.lr = lr
        self.weights = {name: float(getattr(weights, name)) for name in self.REGULARISERS}

    def parameter_groups(self) -> list[dict]:
        return self.field.parameter_groups(self.lr)

    def losses(self, rendered) -> dict[str, torch.Tensor]:
        return {name: w * rendered.regularisers[name] for name, w in self.weights.items()
                if w > 0 and name in rendered.regularisers}

    def state_dict(self) -> dict:
        return self.field.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state)


class BackgroundPart(TrainedPart):
    """The learned environment colour behind the object (half the steps use a random solid one)."""

    name = "background"

    def __init__(self, background: Background):
        self.background = background

    def parameter_groups(self) -> list[dict]:
        return [{"params": self.background.parameters(), "lr": BACKGROUND_LR}]

    def state_dict(self) -> dict:
        return self.background.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.background.load_state_dict(state)
