"""The sidebar panel (3D View > N > SDS): settings, Generate/Refine/Cancel, progress, preview."""
from __future__ import annotations

import bpy

from . import preferences, runner, start_mesh
from .wrap import wrap


def _time(seconds: float) -> str:
    if seconds < 0:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def refine_hint(context, ob) -> str:
    """What Refine (Source: Auto) will do with `ob`, in the words the panel shows; "" when it
    cannot say (not a generated object, or its mesh cannot be read)."""
    if ob is None or "sds_job" not in ob:
        return ""
    try:
        depsgraph = context.view_layer.depsgraph  # as evaluated for this redraw: drawing must not evaluate
        now = start_mesh.cached_fingerprint(ob, depsgraph) if ob.type == "MESH" else None
        return start_mesh.refine_plan(ob, depsgraph, "AUTO", fingerprint_now=now)[1]
    except Exception:  # a panel must draw whatever the object holds
        return ""


def start_hint(context) -> tuple[str, str]:
    """(text, icon) under Start From = Active Mesh: which object it will take."""
    ob = context.view_layer.objects.active
    if ob is None:
        return "No active object: click your blockout", "ERROR"
    if ob.type != "MESH":
        return f"'{ob.name}' is not a mesh", "ERROR"
    return f"From '{ob.name}' (modifiers applied)", "MESH_DATA"


class SDS_PT_main(bpy.types.Panel):
    bl_label = "Text to Mesh"
    bl_idname = "SDS_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SDS"

    def draw(self, context):
        layout = self.layout
        s = context.scene.sds
        prefs = preferences.get(context)
        layout.prop(prefs, "model_source", text="Model")
        if prefs.model_source == "POCKET":
            layout.label(text="Offline demo: " + preferences.POCKET_HINT, icon="INFO")
        layout.prop(s, "prompt", text="")
        layout.prop(s, "negative_prompt", text="Avoid")
        row = layout.row(align=True)
        row.prop(s, "preset", text="")
        row.prop(s, "seed")
        layout.prop(s, "method")
        layout.prop(s, "steps")
        layout.prop(s, "camera_source")
        col = layout.column(align=True)
        col.prop(s, "start_from")
        if s.start_from == "ACTIVE_MESH":
            text, icon = start_hint(context)
            col.label(text=text, icon=icon)
        box = layout.box()
        box.prop(s, "bounds_object")
        if s.bounds_object is None:
            if s.start_from == "ACTIVE_MESH":
                box.label(text="Bounds: around the mesh", icon="PIVOT_BOUNDBOX")
            else:
                box.prop(s, "bounds_size", text="Size at 3D Cursor")
        row = layout.row(align=True)
        row.prop(s, "face_budget")
        row.prop(s, "smoothing")

        generation = runner.active()
        if generation is not None:
            layout.operator("sds.cancel", icon="CANCEL")
        else:
            row = layout.row(align=True)
            row.scale_y = 1.4
            row.operator("sds.generate", icon="PLAY")
            sub = row.row(align=True)
            active = context.view_layer.objects.active
            sub.enabled = active is not None and "sds_job" in active
            sub.operator("sds.refine", icon="FILE_REFRESH")
            hint = refine_hint(context, active)
            if hint:
                layout.label(text=hint, icon="FILE_REFRESH")

        if generation is not None:
            text = s.status
            if s.steps_total:
                text = f"Step {s.step}/{s.steps_total}"
                if s.seconds_left >= 0:
                    text += f" · {_time(s.seconds_left)} left"
            layout.progress(factor=s.progress, type="BAR", text=text)
            layout.label(text=s.status, icon="TIME")
        elif s.status:
            layout.label(text=s.status, icon="ERROR" if s.status == "Failed" else "INFO")
        if s.last_error and generation is None:
            col = layout.column(align=True)
            col.alert = True
            for i, line in enumerate(wrap(s.last_error, 40)):
                col.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        if s.preview_image is not None:
            s.preview_image.preview_ensure()
            layout.template_icon(icon_value=s.preview_image.preview.icon_id, scale=8.0)


class SDS_PT_advanced(bpy.types.Panel):
    bl_label = "Advanced"
    bl_parent_id = "SDS_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SDS"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.prop(context.scene.sds, "job_overrides", text="Overrides")
        row = layout.row(align=True)
        row.operator("sds.export_job", icon="EXPORT")
        row.operator("sds.import_result", icon="IMPORT")


CLASSES = (SDS_PT_main, SDS_PT_advanced)
