"""The diffusion-model kinds and the score-distillation rules every kind can be judged by."""
from __future__ import annotations

from . import KindSpec, RuleSpec, register_kind, register_rule

PREDICTORS = "blender_sds.engine.guidance.predictors"
TEACHERS = "blender_sds.engine.guidance.teachers"

register_kind(KindSpec(
    name="stable-diffusion", predictor=f"{PREDICTORS}.stable_diffusion:StableDiffusionPredictor",
    scale=100.0))  # DreamFusion's CFG: SDS needs far more than image sampling's 7.5
register_kind(KindSpec(
    name="pixel", predictor=f"{PREDICTORS}.pixel:PixelPredictor", scale=20.0, single_file=False))
# The ground-truth test of the engine: the exact denoiser of a few images with known cameras.
register_kind(KindSpec(
    name="reference", predictor=f"{TEACHERS}.reference:ReferencePredictor", scale=1.0, text=False,
    model="none", views=True, own_cameras=True, regularise=False))

register_rule(RuleSpec(
    name="sds", rule="blender_sds.engine.guidance.rules.sds:SDS",
    summary="Score Distillation Sampling (DreamFusion) with classifier-free guidance"))
