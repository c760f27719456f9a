"""blender-sds: text to an editable, vertex-coloured mesh by Score Distillation Sampling.

This package is both the Blender extension (register/unregister below, the `addon`
sub-package) and the engine that runs in a worker Python (`engine`). Importing it must
stay cheap and free of bpy and torch, because the worker imports it too.
"""


def register():
    from .addon import register as _register
    _register()


def unregister():
    from .addon import unregister as _unregister
    _unregister()
