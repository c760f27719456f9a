"""The job Generate sends (and Export Job writes), and the job Refine sends, from the scene.

Everything the engine needs is put into the job here; nothing is read from Blender behind
its back later: a start mesh (Start From = Active Mesh, or Refine of an edited object) is
written as a file into the run's folder (start_mesh.py) and the job names it as `init.mesh`.
The job is validated with the engine's own schema (blender_sds.job, stdlib only) before
anything starts, so a bad setting is reported with the name of the field the artist has to
change and the scene is never touched.
"""
from __future__ import annotations

import copy
import json
import os

import bpy
from mathutils import Vector

from .. import job as job_schema
from .. import kinds
from . import preferences, rig, start_mesh
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
    "init.mesh": "Start From in the SDS panel (or the mesh of the object you refine)",
    "mesh.target_faces": "Face Budget in the SDS panel",
    "mesh.smooth": "Smoothing in the SDS panel",
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
    spec = kinds.kind(name)
    check = (spec.check_negative or spec.check_prompt) if key == "negative_prompt" else spec.check_prompt
    text = job.get(key, "")
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


def mesh_options(scene) -> dict:
    """The job's `mesh` keys the panel sets: Face Budget and Smoothing."""
    return {"target_faces": int(scene.sds.face_budget), "smooth": int(scene.sds.smoothing)}


def _remove(path: str | None) -> None:
    if path:
        try:
            os.remove(path)
        except OSError:
            pass


def start_from_active(context, path: str) -> dict:
    """Start From = Active Mesh: write the active object's geometry (world space) to `path` and
    return the bounds: the Bounds Object's (the mesh must be inside it), else a cube around the
    mesh with a margin."""
    scene = context.scene
    ob = context.view_layer.objects.active
    if ob is None:
        raise ArtistError("Start From is Active Mesh, but no object is active: click your blockout mesh, or set "
                          "Start From to Blob")
    verts, faces, colors = start_mesh.geometry(ob, context.evaluated_depsgraph_get(), world=True)
    box = scene.sds.bounds_object
    if box is None:
        found = start_mesh.fitted_bounds(verts)
        if not job_schema.BOUNDS_SIZE[0] <= found["size"] <= job_schema.BOUNDS_SIZE[1]:
            raise ArtistError(f"The mesh of '{ob.name}' is {found['size'] / (1 + 2 * start_mesh.BOUNDS_MARGIN):.4g} "
                              f"units across; the bounds around it must be {job_schema.BOUNDS_SIZE[0]:g} to "
                              f"{job_schema.BOUNDS_SIZE[1]:g}: scale it (and apply the scale), or set a Bounds Object")
    else:
        found = bounds(scene)
        past = start_mesh.outside_by(verts, found)
        if not start_mesh.inside(verts, found):
            raise ArtistError(f"The mesh of '{ob.name}' reaches {past:.3g} units outside the box of Bounds Object "
                              f"'{box.name}': enlarge or move '{box.name}', or clear Bounds Object to fit the bounds "
                              "around the mesh")
    start_mesh.write_npz(path, verts, faces, colors)
    return found


def generate_job(context, prefs, folder: str | None = None, mesh_name: str = start_mesh.INIT_MESH_FILE,
                 relative: bool = False) -> dict:
    """The raw job Generate sends for the scene's settings (checked, not normalised).

    With Start From = Active Mesh the active object's mesh is written to `folder`/`mesh_name`
    (the run's folder; Export Job's folder) and named as `init.mesh`: absolute, or relative to
    `folder` (the job file's folder) when `relative`. A job that fails its check takes the file
    away again."""
    scene = context.scene
    s = scene.sds
    if not s.prompt.strip():
        raise ArtistError("The prompt is empty: type what to make in Prompt (3D View sidebar > SDS), "
                          "then press Generate")
    written = None
    if s.start_from == "ACTIVE_MESH":
        if folder is None:
            raise ValueError("Start From = Active Mesh needs a folder for the start mesh")
        written = os.path.join(folder, mesh_name)
        where = start_from_active(context, written)
    else:
        where = bounds(scene)
    try:
        job = {"version": job_schema.SCHEMA_VERSION, "prompt": s.prompt, "negative_prompt": s.negative_prompt,
               "seed": s.seed, "preset": s.preset.lower(), "bounds": where,
               "guidance": {**guidance(prefs), **method_guidance(scene)},
               "cameras": cameras(context, s.camera_source), "mesh": mesh_options(scene)}
        if written:
            job["init"] = {"mesh": written}
        if s.steps > 0:
            job["steps"] = s.steps
        job = job_schema.merge_overrides(job, overrides(scene))  # after the Method: a tech artist's keys win
        validate(job, os.getcwd())
    except BaseException:
        _remove(written)
        raise
    if written and relative and job.get("init", {}).get("mesh") == written:
        job["init"]["mesh"] = mesh_name  # beside the job file, which travels with it
    return job


def _bounds_holding(old, verts) -> dict:
    """The run's bounds when the mesh is inside them, else grown to hold it as well."""
    try:
        known = {"center": [float(v) for v in old["center"]][:3], "size": float(old["size"])}
    except (TypeError, KeyError, ValueError):
        return start_mesh.fitted_bounds(verts)  # a stored job someone edited: around the mesh
    return known if start_mesh.inside(verts, known) else start_mesh.fitted_bounds(verts, around=known)


def refine_job(context, ob, camera_source: str, steps: int = 0, source: str = "AUTO",
               folder: str | None = None) -> tuple[dict, str, tuple[str, str]]:
    """The job that refines `ob`, seen from the scene's cameras: (job, base_dir, plan).

    `plan` is start_mesh.refine_plan's (CHECKPOINT or MESH, its sentence). CHECKPOINT continues
    the object's run from its checkpoint; MESH writes the object's mesh as it is now (its own
    frame, which is the job's) to `folder` as `init.mesh` and starts from it, within the run's
    bounds (grown to hold the mesh if an edit took it outside). Cameras are expressed in the
    frame the object was generated in, so an object the artist moved is refined from where the
    cameras see it now. The guidance (the Method among it) is the object's own run's, whatever
    the panel holds now; Face Budget and Smoothing are the panel's.
    """
    stored = ob.get("sds_job")
    if not stored:
        raise ArtistError(f"'{ob.name}' was not made by SDS (it has no sds_job): select a generated object to refine")
    try:
        job = json.loads(stored)
    except json.JSONDecodeError:
        raise ArtistError(f"The sds_job property of '{ob.name}' is not valid JSON: generate it again") from None
    if not isinstance(job, dict):
        raise ArtistError(f"The sds_job property of '{ob.name}' is not a job: generate it again")
    depsgraph = context.evaluated_depsgraph_get()
    plan = start_mesh.refine_plan(ob, depsgraph, source)
    checkpoint = ob.get("sds_checkpoint")
    if plan[0] == start_mesh.CHECKPOINT:
        if not checkpoint:
            raise ArtistError(f"'{ob.name}' has no sds_checkpoint to continue: refine it with Source set to Mesh")
        if not os.path.isfile(checkpoint):
            raise ArtistError(f"The checkpoint of '{ob.name}' is gone ({checkpoint}): refine it with Source set to "
                              "Mesh (or Auto), or generate it again")
    job["cameras"] = job_schema.merge_overrides(job.get("cameras", {}),
                                                cameras(context, camera_source, rig.object_frame(ob)))
    if camera_source == "ORBIT":
        job["cameras"].pop("rig", None)
    optim = job.setdefault("optim", {})
    for key in ("keep_shape", "keep_shape_schedule"):  # a start mesh's own defaults, or none
        optim.pop(key, None)
    stored_mesh = job.get("mesh")
    job["mesh"] = {**(stored_mesh if isinstance(stored_mesh, dict) else {}), **mesh_options(context.scene)}
    written = None
    if plan[0] == start_mesh.MESH:
        if folder is None:
            raise ValueError("refining from the mesh needs a folder for the start mesh")
        verts, faces, colors = start_mesh.geometry(ob, depsgraph, world=False)
        job["bounds"] = _bounds_holding(job.get("bounds"), verts)
        written = start_mesh.write_npz(os.path.join(folder, start_mesh.INIT_MESH_FILE), verts, faces, colors)
        job["init"] = {"mesh": written, "checkpoint": None, "resume": False}
        optim.pop("albedo_steps", None)  # the new run's own share of its steps
        base_dir = folder
    else:
        job["init"] = {"checkpoint": checkpoint, "resume": False}
        # The albedo-only warm-up shapes a field from scratch; a refined field needs none.
        optim["albedo_steps"] = 0
        base_dir = os.path.dirname(checkpoint)
    try:
        job = job_schema.merge_overrides(job, overrides(context.scene))
        if steps > 0:  # the shape phase and the scale ramp keep their share of the shorter or longer run
            job = job_schema.rescaled(job, steps)
        if isinstance(job["optim"].get("albedo_steps"), int) and isinstance(job.get("steps"), int):
            job["optim"]["albedo_steps"] = min(job["optim"]["albedo_steps"], job["steps"])
        validate(job, base_dir)
    except BaseException:
        _remove(written)
        raise
    return job, base_dir, plan
