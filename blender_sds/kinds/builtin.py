"""The diffusion-model kinds and the score-distillation rules every kind can be judged by."""
from __future__ import annotations

from . import KindSpec, MethodSpec, RuleSpec, register_kind, register_method, register_rule

PREDICTORS = "blender_sds.engine.guidance.predictors"
TEACHERS = "blender_sds.engine.guidance.teachers"

register_kind(KindSpec(
    name="stable-diffusion", predictor=f"{PREDICTORS}.stable_diffusion:StableDiffusionPredictor",
    scale=100.0, sampling_scale=7.5))  # DreamFusion's CFG: SDS needs far more than image sampling's 7.5
register_kind(KindSpec(
    name="pixel", predictor=f"{PREDICTORS}.pixel:PixelPredictor", scale=20.0, single_file=False,
    sampling_scale=7.0))  # threestudio's DeepFloyd IF SDS scale; IFPipeline samples at 7.0
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
# The successors made for normal CFG (../shared/reference/sds-methods.md 4.5, 4.6, 1.9, 4.8).
NFSD_NEGATIVE = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                 "low-resolution, gloomy")
CSD_NEGATIVE = "oversaturated color, ugly, tiling, low quality, noisy"
register_rule(RuleSpec(
    name="nfsd", rule=f"{RULES}.nfsd:NFSD", sampling_cfg=True, negative_prompt=NFSD_NEGATIVE,
    summary="Noise-free score distillation (Katzir et al.): condition and domain terms, no noise subtracted"))
register_rule(RuleSpec(
    name="csd", rule=f"{RULES}.csd:CSD", sampling_cfg=True, negative_prompt=CSD_NEGATIVE, weighting="uniform",
    summary="Classifier score distillation (Yu et al.): the classifier term alone, its negative annealed in"))
register_rule(RuleSpec(
    name="vsd", rule=f"{RULES}.vsd:VSD", sampling_cfg=True, estimator=True,
    summary="Variational score distillation (ProlificDreamer): the renders' own noise estimated by a "
            "network trained alongside"))

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

# The remedies for over-saturation (docs/QUALITY.md "Saturation" measures them), all at normal CFG.
register_method(MethodSpec(
    name="nfsd", label="NFSD", guidance={"rule": "nfsd", "view_dependent": True},
    summary="Noise-free distillation at normal CFG, away from a 'blurry, dull' negative: 3 judge passes a step"))
register_method(MethodSpec(
    name="csd", label="CSD", guidance={"rule": "csd", "view_dependent": True},
    summary="The prompt's classifier term alone at normal CFG, away from 'oversaturated': 3 judge passes a step"))
register_method(MethodSpec(
    name="vsd", label="VSD", guidance={"rule": "vsd", "view_dependent": True},
    summary="ProlificDreamer: a second network learns the renders' own noise: 3 passes and a training step"))
register_method(MethodSpec(
    name="esd", label="ESD", guidance={"rule": "vsd", "view_dependent": True, "estimator": {"camera_scale": 0.5}},
    summary="VSD with its estimator half camera-free, for more variety across views: 4 passes and a training step"))
