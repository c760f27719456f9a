"""Generate, Refine, Export Job + the engine CLI + Import Result through a real worker (tests/addon/test_addon_e2e.py)."""
import json
import os
import subprocess
import sys
import time

import bpy

from .common import ADDON, call, object_facts, setup_run, tree_listing


def run(args):
    prefs, scene = setup_run(args)
    ext_dir = os.path.dirname(sys.modules[ADDON].__file__)
    ext_files = tree_listing(ext_dir)
    out = {"timings": {}}

    t = time.monotonic()
    ret, err = call(bpy.ops.sds.generate)
    out["timings"]["generate"] = time.monotonic() - t
    gen = bpy.context.view_layer.objects.active
    out["generate"] = {"returned": ret, "message": err, "object": gen and object_facts(gen),
                       "status": scene.sds.status, "step": scene.sds.step, "steps": scene.sds.steps_total,
                       "progress": scene.sds.progress,
                       "preview": scene.sds.preview_image and scene.sds.preview_image.size[:],
                       "running": scene.sds.is_running}
    if err:
        return out
    with open(os.path.join(gen["sds_result"], "job.json")) as f:  # the job the local worker ran
        out["generate"]["ran_guidance"] = json.load(f)["guidance"]
    gen_name = gen.name
    gen_mesh = gen.data.name
    gen_verts = len(gen.data.vertices)

    # Refine from the scene cameras, after moving the object: a new object, the original untouched.
    gen.location = (0.5, 0.0, 0.0)
    bpy.context.view_layer.update()
    t = time.monotonic()
    ret, err = call(bpy.ops.sds.refine, steps=1)
    out["timings"]["refine"] = time.monotonic() - t
    ref = bpy.context.view_layer.objects.active
    out["refine"] = {"returned": ret, "message": err, "object": ref and object_facts(ref),
                     "original_still_there": gen_name in bpy.data.objects,
                     "original_mesh_same": bpy.data.objects[gen_name].data.name == gen_mesh
                     and len(bpy.data.objects[gen_name].data.vertices) == gen_verts}

    # Export the job, run the engine's command line on it, import the result folder.
    job_path = os.path.join(args["tmp"], "exported", "job.json")
    ret, err = call(bpy.ops.sds.export_job, filepath=job_path)
    out["export"] = {"returned": ret, "message": err, "exists": os.path.isfile(job_path)}
    result_dir = os.path.join(args["tmp"], "cli-result")
    t = time.monotonic()
    env = dict(os.environ, PYTHONPATH=args["repo"], PYTHONPYCACHEPREFIX=args["pycache"])
    cli = subprocess.run([args["worker_python"], "-m", "blender_sds.engine", "run", job_path, "--out", result_dir,
                          "--progress", "none", "--device", "cpu"], capture_output=True, text=True, env=env)
    out["timings"]["cli"] = time.monotonic() - t
    out["cli"] = {"code": cli.returncode, "stderr": cli.stderr[-2000:]}
    ret, err = call(bpy.ops.sds.import_result, directory=result_dir)
    imp = bpy.context.view_layer.objects.active
    out["import"] = {"returned": ret, "message": err, "object": imp and object_facts(imp)}

    out["objects"] = sorted(o.name for o in bpy.data.objects)
    out["torch_loaded"] = "torch" in sys.modules
    out["diffusers_loaded"] = "diffusers" in sys.modules
    out["ext_files_unchanged"] = tree_listing(ext_dir) == ext_files
    return out
