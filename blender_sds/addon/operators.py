"""The operators: sds.generate, sds.refine, sds.cancel, sds.export_job, sds.import_result,
sds.setup_worker.

Each has a synchronous `execute()` (scripts and background Blender: it returns when the
result is in the scene) and an `invoke()` that starts the same work and returns at once,
leaving a timer to follow it (runner.py). Anything the artist can fix is an ArtistError:
reported as it is, {'CANCELLED'} returned, and nothing in the file changed.
"""

import json
import os

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import batch_import, importer, job_builder, preferences, runner, start_mesh, worker_env
from .errors import ArtistError
from ..results import LOG_FILE, read_status


class _Reporting:
    """execute()/invoke() bodies raise ArtistError; this turns it into a report."""

    def _guarded(self, work):
        try:
            return work()
        except ArtistError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}


class _StartsRun(_Reporting):
    """Generate and Refine: blocking from scripts and headless, in the background from the UI.
    Subclasses say how their run starts (`_start`)."""

    def _start(self, context):
        raise NotImplementedError

    def execute(self, context):
        def work():
            ob = runner.wait_and_import(context, self._start(context))
            self.report({"INFO"}, f"SDS: added '{ob.name}'")
            return {"FINISHED"}
        return self._guarded(work)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)

        def work():
            runner.follow(self._start(context))
            return {"FINISHED"}
        return self._guarded(work)


class SDS_OT_generate(_StartsRun, bpy.types.Operator):
    """Make a mesh from the prompt (in the background when pressed; blocking from scripts)"""
    bl_idname = "sds.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER", "UNDO"}

    def _start(self, context):
        prompt = context.scene.sds.prompt
        name = prompt.strip()[:48] or "SDS Result"
        with runner.run_folder(context, prompt or name) as folder:  # Start From's mesh goes there
            job = job_builder.generate_job(context, preferences.get(context), folder)
            return runner.start(context, job, os.getcwd(), name=name, out_dir=folder)


REFINE_SOURCES = [("SCENE", "Scene Cameras", "Learn from the scene's cameras"),
                  ("SELECTED", "Selected Cameras", "Learn from the selected cameras"),
                  ("MIXED", "Mixed", "Scene cameras and random orbits")]
REFINE_STARTS = [("AUTO", "Auto", "Continue the checkpoint while the mesh is as generated; start from the mesh "
                                  "once you have edited it"),
                 ("CHECKPOINT", "Checkpoint", "Continue the run from its checkpoint (edits to the mesh are not "
                                              "seen)"),
                 ("MESH", "Mesh", "Start a new run from the object's mesh as it is now, edits and colours included")]


class SDS_OT_refine(_StartsRun, bpy.types.Operator):
    """Refine the active generated object, seen from your cameras: from its checkpoint, or from its mesh once you have edited it; the result is a new object"""
    bl_idname = "sds.refine"
    bl_label = "Refine"
    bl_options = {"REGISTER", "UNDO"}

    camera_source: EnumProperty(name="Cameras", items=REFINE_SOURCES, default="SCENE")
    source: EnumProperty(name="Source", items=REFINE_STARTS, default="AUTO",
                         description="What the refined run starts from")
    steps: IntProperty(name="Steps", min=0, max=100000, default=0,
                       description="Optimisation steps (0: as many as the original run)")

    def _start(self, context):
        ob = context.view_layer.objects.active
        if ob is None:
            raise ArtistError("Nothing to refine: make a generated object active (click it), then press Refine")
        with runner.run_folder(context, f"{ob.name} refined") as folder:  # a start mesh goes there
            job, base_dir, _plan = job_builder.refine_job(context, ob, self.camera_source, self.steps, self.source,
                                                          folder)
            return runner.start(context, job, base_dir, name=f"{ob.name} refined",
                                matrix_world=ob.matrix_world.copy(), out_dir=folder)


class SDS_OT_cancel(bpy.types.Operator):
    """Stop the running job (its last checkpoint is kept; no mesh is added)"""
    bl_idname = "sds.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        if not runner.cancel():
            self.report({"WARNING"}, "SDS: nothing is running")
            return {"CANCELLED"}
        context.scene.sds.status = "Cancelling"
        return {"FINISHED"}


class SDS_OT_export_job(_Reporting, bpy.types.Operator):
    """Write the job Generate would send to a JSON file, to run elsewhere with the engine's command line"""
    bl_idname = "sds.export_job"
    bl_label = "Export Job"

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def execute(self, context):
        def work():
            if not self.filepath:
                raise ArtistError("Export Job needs a file path (filepath=...)")
            path = os.path.abspath(bpy.path.abspath(self.filepath))
            if os.path.isdir(path):
                raise ArtistError(f"{path} is a folder: give a file name such as job.json")
            folder = os.path.dirname(path)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise ArtistError(f"Cannot write {path}: {exc.strerror or exc}") from None
            mesh_name = os.path.splitext(os.path.basename(path))[0] + "_" + start_mesh.INIT_MESH_FILE
            job = job_builder.generate_job(context, preferences.get(context), folder, mesh_name, relative=True)
            try:
                with open(path, "w", encoding="utf-8") as fh:
                    json.dump(job, fh, indent=2)
                    fh.write("\n")
            except OSError as exc:
                raise ArtistError(f"Cannot write {path}: {exc.strerror or exc}") from None
            self.report({"INFO"}, f"SDS: wrote {path}; run it with 'python -m blender_sds.engine run "
                                  f"{os.path.basename(path)} --out RESULT' and bring RESULT back with Import Result")
            return {"FINISHED"}
        return self._guarded(work)

    def invoke(self, context, event):
        if not self.filepath:
            blend = bpy.data.filepath
            self.filepath = os.path.join(os.path.dirname(blend), "sds_job.json") if blend else "sds_job.json"
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


class SDS_OT_import_result(_Reporting, bpy.types.Operator):
    """Bring a finished result folder (mesh.npz, job.json, checkpoint.pt) into the scene as a new object; a batch folder brings every finished result, in a grid"""
    bl_idname = "sds.import_result"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(subtype="DIR_PATH")

    def execute(self, context):
        def work():
            if not self.directory:
                raise ArtistError("Import Result needs a folder (directory=...)")
            directory = os.path.abspath(bpy.path.abspath(self.directory))
            if batch_import.is_batch(directory):
                done = batch_import.import_batch(context.scene, context.view_layer, directory)
                self.report({"WARNING"} if done.skipped or done.note else {"INFO"}, done.report())
                return {"FINISHED"}
            found = read_status(self.directory)  # a mesh.npz beside a killed or failed run is no result
            if found["state"] not in ("complete", "none"):
                why = f": {found['message']}" if found.get("message") else ""
                raise ArtistError(f"No finished result in {self.directory}: its run's status is {found['state']}{why}; "
                                  f"see {LOG_FILE} there, or run the job again")
            ob = importer.import_result(context.scene, context.view_layer, self.directory)
            self.report({"INFO"}, f"SDS: added '{ob.name}'")
            return {"FINISHED"}
        return self._guarded(work)

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


class SDS_OT_setup_worker(_Reporting, bpy.types.Operator):
    """Make a Python environment with torch and diffusers in the add-on's user folder, for the worker"""
    bl_idname = "sds.setup_worker"
    bl_label = "Set Up Worker Environment"

    def execute(self, context):
        def work():
            setup = worker_env.begin_setup()
            setup.wait()
            if setup.state != "done":
                raise ArtistError(setup.message)
            preferences.get(context).worker_mode = "MANAGED"
            self.report({"INFO"}, setup.message)
            return {"FINISHED"}
        return self._guarded(work)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)

        def work():
            worker_env.begin_setup()
            bpy.app.timers.register(_follow_setup, first_interval=1.0)
            return {"FINISHED"}
        return self._guarded(work)


def _follow_setup():
    setup = worker_env.current()
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            area.tag_redraw()
    if setup is None or setup.state == "running":
        return 1.0
    if setup.state == "done":
        preferences.get().worker_mode = "MANAGED"
    return None


CLASSES = (SDS_OT_generate, SDS_OT_refine, SDS_OT_cancel, SDS_OT_export_job, SDS_OT_import_result,
           SDS_OT_setup_worker)
