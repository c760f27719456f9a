"""`scene.sds`: the settings a run is made from, and the progress the UI shows.

The settings' names are the scripting API (docs/ARCHITECTURE.md "Public names"): prompt, negative_prompt, preset,
seed, method, camera_source, bounds_object, bounds_size, start_from, face_budget, smoothing. `method` takes a method's own name from the
registry as it is spelled there (`blender_sds.kinds.method_names()`, e.g. "sds", "perp-neg"; the
names of docs/JOB.md "Guidance methods" and `bench janus`, not an upper-case form), and
defaults to `kinds.DEFAULT_METHOD`. `steps` and `job_overrides` are for
quick tests and tech artists: `job_overrides` is a JSON object merged into the job last
(e.g. '{"render": {"resolution": 32}, "mesh": {"resolution": 48}}'), with docs/JOB.md's
key names. The progress fields are written only by the add-on, on the main thread.
"""

import zlib

import bpy
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from .. import job as job_schema
from .. import kinds
from . import runner

PRESETS = [("DRAFT", "Draft", "Fewest steps: a quick look"),
           ("STANDARD", "Standard", "The usual balance of time and quality"),
           ("HIGH", "High", "More steps and a finer render and mesh")]
CAMERA_SOURCES = [("ORBIT", "Orbit", "Random cameras orbiting the bounds"),
                  ("SCENE", "Scene Cameras", "The scene's cameras, slightly jittered"),
                  ("SELECTED", "Selected Cameras", "The selected cameras, slightly jittered"),
                  ("MIXED", "Mixed", "Half orbit, half the scene's cameras")]
START_FROM = [("BLOB", "Blob", "Start from a soft blob in the middle of the bounds"),
              ("ACTIVE_MESH", "Active Mesh", "Start from the active object's mesh as the viewport shows it "
                                             "(modifiers applied, its colour attribute): a blockout to grow into the "
                                             "prompt. The object is left as it is; the result is a new object")]


def _method_number(name: str) -> int:
    """The value a .blend file stores for a method: from its name, so saved scenes keep their
    method when the registry gains one or changes its order (enum items store a number)."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


# The score-distillation methods in the registry (blender_sds/kinds/builtin.py), in its order.
METHODS = [(name, kinds.method(name).label, kinds.method(name).summary, "NONE", _method_number(name))
           for name in kinds.method_names()]


class SDS_SceneSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to make, e.g. 'a ceramic teapot'")
    negative_prompt: StringProperty(name="Negative Prompt", description="What to steer away from")
    preset: EnumProperty(name="Preset", items=PRESETS, default="STANDARD")
    seed: IntProperty(name="Seed", min=0, default=0, description="Same seed, same job, same result on the CPU")
    method: EnumProperty(name="Method", items=METHODS, default=kinds.DEFAULT_METHOD,
                         description="How the 2D judge's verdicts become the shape: the remedies for "
                                     "many-faced (Janus) results and what each costs")
    steps: IntProperty(name="Steps", min=0, max=100000, default=0,
                       description="Optimisation steps (0: the preset's number)")
    camera_source: EnumProperty(name="Cameras", items=CAMERA_SOURCES, default="ORBIT",
                                description="Where the training cameras come from")
    bounds_object: PointerProperty(name="Bounds Object", type=bpy.types.Object,
                                   description="The asset lives in this object's bounding box (empty: a cube of "
                                               "Bounds Size at the 3D cursor)")
    bounds_size: FloatProperty(name="Bounds Size", min=0.001, max=10000.0, default=2.0, subtype="DISTANCE", unit="LENGTH",
                               description="Edge of the cube at the 3D cursor that the asset lives in")
    start_from: EnumProperty(name="Start From", items=START_FROM, default="BLOB",
                             description="What the field starts as: a blob, or the active object's mesh")
    face_budget: IntProperty(name="Face Budget", min=0, max=10**8, soft_max=1000000,
                             default=job_schema.DEFAULT_TARGET_FACES,
                             description="At most this many faces in the result (0: keep every face of the "
                                         "isosurface). Also what Refine sends")
    smoothing: IntProperty(name="Smoothing", min=0, max=1000, soft_max=50, default=job_schema.DEFAULT_SMOOTH,
                           description="Smoothing passes on the result's surface before the face budget "
                                       "(0: none). Also what Refine sends")
    job_overrides: StringProperty(name="Job Overrides",
                                  description="Advanced: a JSON object merged into the job (docs/JOB.md names)")

    # progress (written by the add-on)
    status: StringProperty(name="Status", default="")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    step: IntProperty(name="Step")
    steps_total: IntProperty(name="Total Steps")
    seconds_left: FloatProperty(name="Seconds Left", default=-1.0)
    last_error: StringProperty(name="Last Error", default="")
    preview_image: PointerProperty(name="Preview", type=bpy.types.Image)
    is_running: BoolProperty(name="Running", get=lambda _self: runner.active() is not None)


def register():
    bpy.types.Scene.sds = PointerProperty(type=SDS_SceneSettings)


def unregister():
    del bpy.types.Scene.sds
