"""Installs and registers the way a user does, then disable + enable (tests/addon/test_addon_package.py)."""
import os
import sys

import bpy

from .common import ADDON, addon_module, install, tree_listing


def run(args):
    prefs = install(args["zip"])
    import addon_utils
    s = bpy.context.scene.sds
    mod = sys.modules[ADDON]
    ext_dir = os.path.dirname(mod.__file__)
    ops = {name: hasattr(bpy.types, cls) for name, cls in (
        ("generate", "SDS_OT_generate"), ("refine", "SDS_OT_refine"), ("cancel", "SDS_OT_cancel"),
        ("export_job", "SDS_OT_export_job"), ("import_result", "SDS_OT_import_result"))}
    panel = getattr(bpy.types, "SDS_PT_main", None)
    facts = {
        "package": mod.__name__, "ext_dir": ext_dir, "files": tree_listing(ext_dir),
        "ops": ops, "panel_category": panel and panel.bl_category,
        "prefs": {"model": prefs.model, "device": prefs.device, "worker_python": prefs.worker_python,
                  "low_vram": prefs.low_vram, "worker_mode": prefs.worker_mode},
        "scene_props": sorted(p.identifier for p in s.bl_rna.properties if p.identifier != "rna_type"),
        "camera_sources": sorted(i.identifier for i in s.bl_rna.properties["camera_source"].enum_items),
        "presets": sorted(i.identifier for i in s.bl_rna.properties["preset"].enum_items),
        "cache_dir": addon_module("paths").cache_dir(prefs),
        "user_resources": os.environ["BLENDER_USER_RESOURCES"],
        "torch_loaded": "torch" in sys.modules,
    }
    # Disable and enable again: unregister must leave nothing behind that breaks register.
    bpy.ops.preferences.addon_disable(module=ADDON)
    facts["after_disable"] = hasattr(bpy.types.Scene, "sds")
    addon_utils.enable(ADDON, default_set=True)
    facts["after_enable"] = hasattr(bpy.types.Scene, "sds")
    return facts
