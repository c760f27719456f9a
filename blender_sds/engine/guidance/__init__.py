"""The 2D judge: noise predictors (predictors/, teachers/), the rules that turn their
predictions into a gradient (rules/), and the registry that puts a job's pair together."""
from __future__ import annotations

from .predictor import NoisePredictor
from .registry import build_guidance, build_predictor
from .rules.base import GuidanceOutput, ScoreDistillation

__all__ = ["GuidanceOutput", "NoisePredictor", "ScoreDistillation", "build_guidance", "build_predictor"]
