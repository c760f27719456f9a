"""A run's judge, built from the registry (blender_sds/kinds): the kind's predictor under the job's rule."""
from __future__ import annotations

import torch

from ... import kinds
from ..settings import GuidanceSettings, Settings
from .rules.base import ScoreDistillation


def build_predictor(settings: GuidanceSettings, device):
    """The noise predictor of the settings' kind, on `device` (CUDA graphs where they apply).

    Not under a rule that trains an estimator (VSD): its LoRA is switched on and off inside the
    one UNet and its camera embedding attached per pass, which a graph captured once would not
    follow, and its estimator calls the UNet with class labels a graph does not take."""
    predictor = kinds.load(kinds.kind(settings.kind).predictor)(settings, torch.device(device))
    if settings.cuda_graphs and predictor.graphable and not kinds.rule(settings.rule).estimator:
        from .predictors import cuda_graphs
        if cuda_graphs.usable(predictor.device, predictor.low_vram):
            cuda_graphs.graph_judge(predictor)
    return predictor


def build_guidance(settings: GuidanceSettings | dict, device) -> ScoreDistillation:
    """The judge a job asks for, ready on `device`: its rule over its kind's predictor.

    Takes the guidance section, or a whole normalised job (tests and benchmarks), which is
    cut down to the section here.
    """
    if isinstance(settings, dict):
        settings = Settings.from_job(settings).guidance
    predictor = build_predictor(settings, device)
    return kinds.load(kinds.rule(settings.rule).rule)(settings, predictor)
