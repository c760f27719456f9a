"""The job Generate sends (and Export Job writes), and the job Refine sends, from the scene.

Everything the engine needs is put into the job here; nothing is read from Blender behind
its back later. The job is validated with the engine's own schema (blender_sds.job,
stdlib only) before anything starts, so a bad setting is reported with the name of the
field the artist has to change and the scene is never touched.
"""
from __future__ import annotations

import copy
import json
import os

import bpy
from mathutils import Vector

from .. import job as job_schema
from .. import kinds
from . import preferences, rig
from .errors import ArtistError

# Where in the UI a job key comes from, to say what to change when validation refuses it.
_WHERE = {
    "prompt": "Prompt in the SDS panel",
    "negative_prompt": "Negative Prompt in the SDS panel",
    "seed": "Seed in the SDS panel",
    "steps": "Steps in the SDS panel",
    "bounds": "Bounds in the SDS panel",
    "guidance.model": "Model in " + preferences.PREFS_PATH,
    "guidance.rule": "Method in the SDS panel",
    "guidance.view_dependent": "Method in the SDS panel",
    "cameras": "the cameras (Camera Source in the SDS panel)",
}


def _where(key: str) -> str:
    for prefix, where in _WHERE.items():
        if key == prefix or key.startswith(prefix + "."):
            return where
    return "Job Overrides in the SDS panel"


def validate(job: dict, base_dir: str) -> dict:
    """The normalised job, or ArtistError naming the key and the setting to change."""
    try:
        return job_schema.validate_job(job, base_dir)
    except job_schema.JobError as exc:
        hint = _where(exc.key)
        if prompt_not_drawable(job, exc.key):
            hint += ", or set Model Source to Stable Diffusion in " + preferences.PREFS_PATH
        raise ArtistError(f"Job setting {exc}: change {hint}") from None


def prompt_not_drawable(job: dict, key: str | None) -> bool:
    """Whether `key` is a prompt the job's kind cannot draw (its registered check refuses it, as
    the pocket world does words outside its own): then another model source is the remedy."""
    guidance = job.get("guidance")
    name = guidance.get("kind") if isinstance(guidance, dict) else None
    if key not in ("prompt", "negative_prompt") or name not in kinds.kind_names():
        return False
    check, text = kinds.kind(name).check_prompt, job.get(key, "")
    return check is not None and isinstance(text, str) and bool(text.strip()) and check(text) is not None


POCKET_MODEL = "pocket"  # Model set to this word picks the pocket world too (before Model Source existed)


def uses_pocket(prefs) -> bool:
    """Whether the offline pocket world judges the run (Model Source, or the old word in Model)."""
    return prefs.model_source == "POCKET" or prefs.model.strip().lower() == POCKET_MODEL


def model_source(prefs) -> str:
    model = prefs.model.strip()
    if not model:
        raise ArtistError("No model is set: fill in Model in " + preferences.PREFS_PATH
                          + f" (e.g. {preferences.DEFAULT_MODEL}), or set Model Source to Pocket World "
                          "(offline demo)")
    return bpy.path.abspath(model) if model.startswith("//") else model


def guidance(prefs) -> dict:
    """Stable Diffusion from the preferences' model source, or the offline pocket world."""
    if uses_pocket(prefs):
        return {"kind": "pocket"}
    return {"kind": "stable-diffusion", "model": model_source(prefs), "low_vram": prefs.low_vram}


def method_guidance(scene) -> dict:
    """The guidance keys of the Method chosen in the panel (kinds.MethodSpec.guidance), a copy."""
    return copy.deepcopy(kinds.method(scene.sds.method).guidance)


def bounds(scene) -> dict:
    s = scene.sds
    ob = s.bounds_object
    if ob is None:
        return {"center": [float(v) for v in scene.cursor.location], "size": float(s.bounds_size)}
    corners = [ob.matrix_world @ Vector(c) for c in ob.bound_box]
    lo = [min(c[i] for c in corners) for i in range(3)]
    hi = [max(c[i] for c in corners) for i in range(3)]
    size = max(h - l for l, h in zip(lo, hi))
    if size <= 1e-6:
        raise ArtistError(f"Bounds Object '{ob.name}' has no extent: use a mesh or a box around the asset, or "
                          "clear Bounds Object to use Bounds Size at the 3D cursor")
    return {"center": [(l + h) / 2 for l, h in zip(lo, hi)], "size": size}


def selected_objects(context) -> list:
    return [ob for ob in context.view_layer.objects if ob.select_get()]


def cameras(context, source: str, frame=None) -> dict:
    """The job's `cameras` for a camera source (ORBIT, SCENE, SELECTED, MIXED)."""
    if source == "ORBIT":
        return {"mode": "orbit"}
    objects = rig.rig_objects(context.scene, "SELECTED" if source == "SELECTED" else "SCENE",
                              selected_objects(context))
    return {"mode": "mixed" if source == "MIXED" else "rig",
            "rig": rig.rig_records(context.scene, objects, frame)}


def overrides(scene) -> dict:
    text = scene.sds.job_overrides.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtistError(f"Job Overrides is not valid JSON ({exc.msg} at column {exc.colno}): fix or clear it "
                          "in the SDS panel") from None
    if not isinstance(value, dict):
        raise ArtistError("Job Overrides must be a JSON object such as {\"steps\": 100}: fix or clear it")
    return value


def generate_job(context, prefs) -> dict:
    """The raw job Generate sends for the scene's settings (checked, not normalised)."""
    scene = context.scene
    s = scene.sds
    if not s.prompt.strip():
        raise ArtistError("The prompt is empty: type what to make in Prompt (3D View sidebar > SDS), "
                          "then press Generate")
    job = {"version": job_schema.SCHEMA_VERSION, "prompt": s.prompt, "negative_prompt": s.negative_prompt,
           "seed": s.seed, "preset": s.preset.lower(), "bounds": bounds(scene),
           "guidance": {**guidance(prefs), **method_guidance(scene)},
           "cameras": cameras(context, s.camera_source)}
    if s.steps > 0:
        job["steps"] = s.steps
    job = job_schema.merge_overrides(job, overrides(scene))  # after the Method: a tech artist's keys win
    validate(job, os.getcwd())
    return job


def refine_job(context, ob, camera_source: str, steps: int = 0) -> tuple[dict, str]:
    """The job that continues `ob`'s run from its checkpoint, seen from the scene's cameras.

    Cameras are expressed in the frame the object was generated in, so an object the
    artist moved is refined from where the cameras see it now. The guidance (the Method
    among it) is the object's own run's, whatever the panel holds now. Returns (job, checkpoint).
    """
    stored = ob.get("sds_job")
    checkpoint = ob.get("sds_checkpoint")
    if not stored or not checkpoint:
        raise ArtistError(f"'{ob.name}' was not made by SDS (it has no sds_job/sds_checkpoint): select a "
                          "generated object to refine")
    if not os.path.isfile(checkpoint):
        raise ArtistError(f"The checkpoint of '{ob.name}' is gone ({checkpoint}): it cannot be refined; "
                          "generate it again")
    try:
        job = json.loads(stored)
    except json.JSONDecodeError:
        raise ArtistError(f"The sds_job property of '{ob.name}' is not valid JSON: generate it again") from None
    job["cameras"] = job_schema.merge_overrides(job.get("cameras", {}),
                                                cameras(context, camera_source, rig.object_frame(ob)))
    if camera_source == "ORBIT":
        job["cameras"].pop("rig", None)
    job["init"] = {"checkpoint": checkpoint, "resume": False}
    # The albedo-only warm-up shapes a field from scratch; a refined field needs none.
    job.setdefault("optim", {})["albedo_steps"] = 0
    job = job_schema.merge_overrides(job, overrides(context.scene))
    if steps > 0:
        job["steps"] = steps
    if isinstance(job["optim"].get("albedo_steps"), int) and isinstance(job.get("steps"), int):
        job["optim"]["albedo_steps"] = min(job["optim"]["albedo_steps"], job["steps"])
    validate(job, os.path.dirname(checkpoint))
    return job, checkpoint
