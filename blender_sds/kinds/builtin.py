"""The diffusion-model kinds and the score-distillation rules every kind can be judged by."""
from __future__ import annotations

from . import KindSpec, MethodSpec, RuleSpec, register_kind, register_method, register_rule

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

RULES = "blender_sds.engine.guidance.rules"
register_rule(RuleSpec(
    name="sds", rule=f"{RULES}.sds:SDS",
    summary="Score Distillation Sampling (DreamFusion) with classifier-free guidance"))
register_rule(RuleSpec(
    name="perp-neg", rule=f"{RULES}.perp_neg:PerpNeg", view_prompts=True,
    summary="Perp-Neg (Armandpour et al.): the other directions' prompts as negatives, perpendicular to the positive"))
register_rule(RuleSpec(
    name="debiased", rule=f"{RULES}.debiased:DebiasedSDS",
    summary="Debiased SDS (Hong et al.): the gradient clamped at a threshold that rises over the run"))

# The remedies for Janus an artist picks from (docs/QUALITY.md "Janus" measures them).
register_method(MethodSpec(
    name="sds", label="SDS", guidance={"rule": "sds", "view_dependent": False},
    summary="Plain score distillation, one prompt for every view: 2 judge passes a step; prone to Janus"))
register_method(MethodSpec(
    name="view-prompts", label="View Prompts", guidance={"rule": "sds", "view_dependent": True},
    summary="Adds 'front/side/back/overhead view' to the prompt by camera: the cost of SDS"))
register_method(MethodSpec(
    name="perp-neg", label="Perp-Neg", guidance={"rule": "perp-neg", "view_dependent": True},
    summary="View prompts plus the other views' prompts as negatives: 4 judge passes a step, 2x SDS's"))
register_method(MethodSpec(
    name="debiased", label="Debiased", guidance={"rule": "debiased", "view_dependent": True},
    summary="View prompts with the judgement clamped, loosening over the run: the cost of SDS"))
