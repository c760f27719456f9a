"""The Blender half: everything here may import bpy (and numpy), never torch.

Reading order for one job: panel.py (what the artist sets) -> operators.py ->
job_builder.py + rig.py (the job) -> runner.py (start and follow a worker) ->
session.py + worker_client.py (the conversation) -> importer.py (the mesh in the scene).
"""
from __future__ import annotations

import bpy
from bpy.app.handlers import persistent

from . import operators, panel, preferences, properties, runner, start_mesh

_CLASSES = (preferences.SDS_AddonPreferences, properties.SDS_SceneSettings, *operators.CLASSES, *panel.CLASSES)


@persistent
def _on_load_pre(*_args):
    runner.stop_all("Another file was loaded")
    start_mesh.forget()


def register():
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    properties.register()
    start_mesh.register()
    bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister():
    runner.stop_all("The add-on was disabled")
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    start_mesh.unregister()
    properties.unregister()
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
