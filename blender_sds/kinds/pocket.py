"""The pocket world's kind: its tuning lives here, beside its vocabulary (pocket_words.py).

The pocket teacher is a pixel-space model of small images, there to run offline on a CPU:
its presets are sized so "standard" makes an asset in under 2 minutes on a 2-core CPU
(docs/QUALITY.md has what that reaches).
"""
from __future__ import annotations

from ..pocket_words import PocketPromptError, parse_negative, parse_prompt
from . import KindSpec, register_kind

PRESETS: dict[str, dict] = {
    "draft": {"steps": 400, "render": {"resolution": 32, "batch": 1, "samples": 48}, "mesh_resolution": 64,
              "field": "pocket"},
    "standard": {"steps": 900, "render": {"resolution": 32, "batch": 1, "samples": 48}, "mesh_resolution": 96,
                 "field": "pocket"},
    "high": {"steps": 3000, "render": {"resolution": 64, "batch": 1, "samples": 96}, "mesh_resolution": 128,
             "field": "draft"},
}
# Binary-entropy opacity weight: the pocket teacher's soft fields otherwise mesh too small (docs/QUALITY.md).
OPAQUE = 1000.0
# Std of the orbit cameras' look-at point, bounds sizes (threestudio's centre perturbation). The
# pocket world's objects are centred by definition, and its memorising teacher answers an
# off-centre render with a centred image, which shrinks the result (docs/QUALITY.md).
TARGET_JITTER = 0.0


def prompt_problem(prompt: str) -> str | None:
    """Why the offline world cannot draw `prompt`, or None: said before any worker starts."""
    try:
        parse_prompt(prompt)
    except PocketPromptError as error:
        return error.problem
    return None


def negative_problem(negative: str) -> str | None:
    """Why the offline world cannot draw a negative prompt (one object, or a list of styles), or None."""
    try:
        parse_negative(negative)
    except PocketPromptError as error:
        return error.problem
    return None


# The camera-blind teacher's front bias: the share of a marked object's data taken from the
# front (the front view's azimuths, within 45 degrees of -Y). A text-to-image model learned
# from photos, and photos of things with a front (faces, logos, products) mostly show it:
# four in five is the bias this lab gives its 2D judge, the problem SDS inherits as Janus
# (docs/QUALITY.md "Janus"). 0.25 is no bias (the front view is a quarter of the circle).
FRONT_BIAS = 0.8

# The teacher's "normal CFG", the rules made for it start from (NFSD, CSD, VSD): the largest
# scale at which its own DDIM samples keep their saturation (`bench cfg`: |dS| <= 0.05 at 1.5 over
# four prompts, +0.11 for a green cube at 2; docs/QUALITY.md "Saturation"). SD's 7.5 means the
# same for SD. At 1.5 alone no rule forms a cube (a sphere comes back), so those rules hold
# SHAPE_SCALE while the shape forms (optim.shape_steps; the colour frozen, or restarted after it:
# optim.shape_colour), and then ramp down to it (kinds.KindSpec.shape_scale). SDS's own 20: at
# 7.5 5 of 12 shapes came back rounder.
SAMPLING_SCALE = 1.5
SHAPE_SCALE = 20.0

# VSD's estimator here is a small UNet trained on the renders beside the teacher, not a LoRA of
# a pretrained UNet: at the LoRA's 1e-3 it lags the renders and the colours come back washed out
# (a purple sphere -0.17 in saturation, -0.04 at 3e-2; docs/QUALITY.md "Saturation").
ESTIMATOR_LR = 3e-2

# Pose-matched by default: camera-blind, its memorised data cannot break a blob's symmetry
# (docs/QUALITY.md).
SPEC = register_kind(KindSpec(
    name="pocket", predictor="blender_sds.engine.guidance.teachers.pocket:PocketPredictor", scale=20.0,
    model="optional", pose_matched=True, opaque=OPAQUE, target_jitter=TARGET_JITTER, presets=PRESETS,
    check_prompt=prompt_problem, check_negative=negative_problem, front_bias=FRONT_BIAS,
    sampling_scale=SAMPLING_SCALE,
    shape_scale=SHAPE_SCALE, estimator_lr=ESTIMATOR_LR))
