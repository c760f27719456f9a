"""The artist's mesh both ways (tests/addon/test_addon_artist_mesh.py).

`artist_mesh` (no worker): Start From = Active Mesh writes the blockout's evaluated geometry in
world space with its colours and fits the bounds around it (Export Job shows the job); the
refusals (no active object, not a mesh, no faces, outside the Bounds Object); Face Budget and
Smoothing in the job; Import Result's shading (smooth, sharp past 30 degrees) and fingerprint;
what Refine's Auto source decides before and after an edit in Edit Mode, and the jobs it builds.

`artist_mesh_e2e` (real runs, pocket world): Generate from a blockout through a local worker;
then, on a `serve` the test started, the issue's acceptance cases: the generated asset made
1.6x taller in Edit Mode and refined (its proportions kept, the edited object untouched, undo
takes the result back), and its top third deleted and refined (the top does not grow back);
and a start mesh the engine refuses is named by the client's file, not the server's path.
"""
import json
import os

import bmesh
import bpy
import numpy as np
from mathutils import Matrix

from .common import ADDON, addon_module, call, changes, empty_scene, install, object_facts, panel_drawn, snapshot


def panel_labels(context):
    return [d[len("label:"):] for d in panel_drawn(context) if d.startswith("label:")]


# -- scenes --------------------------------------------------------------------------------------

FIRST_SRGB, SECOND_SRGB = (1.0, 0.5, 0.0, 1.0), (0.0, 0.5, 1.0, 1.0)


def blockout(scene, name="Blockout", location=(1.0, 2.0, 0.5), rotation=(0.0, 0.0, 0.5), scale=1.5,
             array=True):
    """Two overlapping cubes in one mesh (two closed shells, not joined into one watertight
    surface), a byte colour attribute on the corners (one colour per cube, in sRGB), placed,
    turned and scaled, with an Array modifier (a second copy 3 units up in its own frame)."""
    me = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bmesh.ops.create_cube(bm, size=0.8, matrix=Matrix.Translation((0.4, 0.0, 0.3)))
    bm.to_mesh(me)
    bm.free()
    attr = me.color_attributes.new("Paint", "BYTE_COLOR", "CORNER")
    corner_vertex = np.empty(len(me.loops), dtype=np.int32)
    me.loops.foreach_get("vertex_index", corner_vertex)
    srgb = np.where((corner_vertex < 8)[:, None], FIRST_SRGB, SECOND_SRGB).astype(np.float32)
    attr.data.foreach_set("color_srgb", srgb.ravel())
    me.color_attributes.active_color = attr
    ob = bpy.data.objects.new(name, me)
    scene.collection.objects.link(ob)
    ob.location, ob.rotation_euler, ob.scale = location, rotation, (scale, scale, scale)
    if array:
        mod = ob.modifiers.new("Array", "ARRAY")
        mod.count, mod.use_relative_offset, mod.use_constant_offset = 2, False, True
        mod.constant_offset_displace = (0.0, 0.0, 3.0)
    bpy.context.view_layer.objects.active = ob
    ob.select_set(True)
    bpy.context.view_layer.update()
    return ob


def box_object(scene, name, location, size):
    """A cube mesh object `size` across at `location`: what an artist sets as Bounds Object."""
    me = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=size)
    bm.to_mesh(me)
    bm.free()
    ob = bpy.data.objects.new(name, me)
    scene.collection.objects.link(ob)
    ob.location = location
    bpy.context.view_layer.update()
    return ob


def local_coordinates(me):
    co = np.empty(len(me.vertices) * 3, dtype=np.float32)
    me.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def mesh_state(ob):
    """What must not change on an object a run starts from."""
    return {"vertices": local_coordinates(ob.data).round(6).tolist(), "faces": len(ob.data.polygons),
            "matrix": [list(r) for r in ob.matrix_world], "modifiers": [m.name for m in ob.modifiers],
            "attributes": sorted(a.name for a in ob.data.attributes), "mode": ob.mode}


def srgb_to_linear(c):
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _rows(a):
    a = np.round(np.asarray(a, dtype=np.float64), 4)
    return a[np.lexsort(a.T[::-1])].tolist()


# -- the scenario without a worker ---------------------------------------------------------------

def run(args):
    if args["scenario"] == "artist_mesh_e2e":
        return run_e2e(args)
    prefs = install(args["zip"])
    prefs.model_source = "POCKET"
    prefs.worker_python = "/nonexistent/python"  # nothing here starts a worker
    out = {"start_from": start_from_case(args, prefs), "errors": error_cases(args),
           "budget": budget_case(args), "import": import_case(args), "refine": refine_case(args),
           "remote": remote_case(args)}
    return out


def remote_case(args):
    """What the remote client makes of a job with a start mesh: an upload under init/, the job
    naming it; a start mesh in another format refused before anything is sent; and the
    server's words about an upload turned back into the client's own path."""
    import importlib
    job_schema, remote_client = importlib.import_module(ADDON + ".job"), addon_module("remote_client")
    folder = os.path.join(args["tmp"], "remote-form")
    os.makedirs(folder)
    out = {}
    for name in ("my blockout.npz", "blockout.obj"):
        path = os.path.join(folder, name)
        with open(path, "wb") as fh:
            fh.write(b"x")
        job = job_schema.validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket"},
                                       "init": {"mesh": path}})
        try:
            remote, files = remote_client.remote_form(job)
            out[name] = {"mesh": remote["init"]["mesh"], "files": files, "local": path}
        except ValueError as exc:
            out[name] = {"refused": str(exc), "key": getattr(exc, "key", None)}
    client = remote_client.RemoteClient("127.0.0.1", 9, "", folder, os.path.join(folder, "log.txt"))
    client._uploads = [("init/my_blockout.npz", os.path.join(folder, "my blockout.npz"))]
    out["ours"] = client._ours("init.mesh: 'init/my_blockout.npz' was not uploaded")
    return out


def _scene():
    scene = empty_scene()
    s = scene.sds
    s.prompt, s.camera_source, s.start_from = "a red cube", "ORBIT", "ACTIVE_MESH"
    return scene


def _export(args, name):
    path = os.path.join(args["tmp"], name, "job.json")
    ret, err = call(bpy.ops.sds.export_job, filepath=path)
    job = json.load(open(path)) if ret == ["FINISHED"] else None
    return path, job, err


def start_from_case(args, prefs):
    scene = _scene()
    ob = blockout(scene)
    props = scene.sds.bl_rna.properties["start_from"]
    out = {"default": props.default, "items": [i.identifier for i in props.enum_items],
           "panel": panel_drawn(bpy.context)}
    before = mesh_state(ob)
    path, job, err = _export(args, "start_from")
    out["message"] = err
    if job is None:
        return out
    out["init"] = job.get("init")
    out["bounds"] = job["bounds"]
    npz = os.path.join(os.path.dirname(path), job["init"]["mesh"])
    with np.load(npz, allow_pickle=False) as data:
        out["npz_keys"] = sorted(data.files)
        verts, faces, colors = data["vertices"], data["faces"], data["colors"]
        out["dtypes"] = [str(verts.dtype), str(faces.dtype), str(colors.dtype)]
        out["shapes"] = [list(verts.shape), list(faces.shape), list(colors.shape)]
    # The expectation, computed apart from the add-on: the two cubes, their Array copy 3 up, placed.
    local = local_coordinates(ob.data).astype(np.float64)
    local = np.concatenate([local, local + (0.0, 0.0, 3.0)])
    m = np.array(ob.matrix_world)
    expected = local @ m[:3, :3].T + m[:3, 3]
    out["world_match"] = _rows(verts) == _rows(expected)
    lo, hi = expected.min(axis=0), expected.max(axis=0)
    out["expected_center"] = ((lo + hi) / 2).tolist()
    out["expected_extent"] = float((hi - lo).max())
    out["faces_in_range"] = bool(faces.min() >= 0 and faces.max() < len(verts))
    # colours: the first cube's corners (and its copy's) one colour, the second's the other, linear
    first = np.isclose(colors[:, 2], 0.0, atol=1e-3)
    out["first_color"] = colors[first][0].tolist() if first.any() else None
    out["second_color"] = colors[~first][0].tolist() if (~first).any() else None
    out["expected_first"] = srgb_to_linear(FIRST_SRGB[:3]).tolist()
    out["expected_second"] = srgb_to_linear(SECOND_SRGB[:3]).tolist()
    out["color_count"] = [int(first.sum()), int((~first).sum())]
    out["unchanged"] = mesh_state(ob) == before and "Array" in ob.modifiers
    out["objects"] = sorted(o.name for o in bpy.data.objects)
    return out


def error_cases(args):
    out = {}

    def refused(name, make):
        scene = _scene()
        make(scene)
        folder = os.path.join(args["tmp"], "refused", name)
        before = snapshot()
        _path, job, err = _export(args, os.path.join("refused", name))
        out[name] = {"message": err, "job": job is not None, "scene_same": snapshot() == before,
                     "files": sorted(os.listdir(folder)) if os.path.isdir(folder) else []}

    def no_active(scene):
        blockout(scene)
        bpy.context.view_layer.objects.active = None

    def camera(scene):
        cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
        scene.collection.objects.link(cam)
        bpy.context.view_layer.objects.active = cam

    def no_faces(scene):
        me = bpy.data.meshes.new("Points")
        me.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [(0, 1)], [])
        ob = bpy.data.objects.new("Points", me)
        scene.collection.objects.link(ob)
        bpy.context.view_layer.objects.active = ob

    def outside(scene):
        ob = blockout(scene, array=False)
        scene.sds.bounds_object = box_object(scene, "Box", ob.location, 1.0)
        bpy.context.view_layer.objects.active = ob

    refused("no_active", no_active)
    refused("not_a_mesh", camera)
    refused("no_faces", no_faces)
    refused("outside_bounds_object", outside)

    # inside a Bounds Object that holds it: its box is the job's bounds
    scene = _scene()
    ob = blockout(scene, array=False)
    box = scene.sds.bounds_object = box_object(scene, "BigBox", ob.location, 6.0)
    bpy.context.view_layer.objects.active = ob
    _path, job, err = _export(args, "inside_box")
    out["inside_bounds_object"] = {"message": err, "bounds": job and job["bounds"],
                                   "box": [list(box.location), 6.0]}
    return out


def budget_case(args):
    scene = _scene()
    scene.sds.start_from = "BLOB"
    out = {"defaults": [scene.sds.face_budget, scene.sds.smoothing], "panel": panel_drawn(bpy.context)}
    _path, job, err = _export(args, "budget_default")
    out["default_job"] = job and job["mesh"]
    scene.sds.face_budget, scene.sds.smoothing = 5000, 3
    _path, job, err = _export(args, "budget_set")
    out["set_job"] = job and job["mesh"]
    scene.sds.face_budget = 0
    _path, job, err = _export(args, "budget_all")
    out["all_job"] = job and job["mesh"]
    scene.sds.face_budget = 50
    _path, job, err = _export(args, "budget_bad")
    out["bad"] = err
    return out


def _sharp_edges(me):
    """{frozenset(vertex pair): sharp?} of every edge."""
    sharp = me.attributes.get("sharp_edge")
    flags = np.zeros(len(me.edges), dtype=bool)
    if sharp is not None:
        sharp.data.foreach_get("value", flags)
    pairs = np.empty(len(me.edges) * 2, dtype=np.int32)
    me.edges.foreach_get("vertices", pairs)
    return pairs.reshape(-1, 2), flags


def import_case(args):
    empty_scene()
    ret, err = call(bpy.ops.sds.import_result, directory=args["cube_result"])
    ob = bpy.context.view_layer.objects.active
    out = {"returned": ret, "message": err}
    if ob is None:
        return out
    me = ob.data
    smooth = np.empty(len(me.polygons), dtype=bool)
    me.polygons.foreach_get("use_smooth", smooth)
    pairs, flags = _sharp_edges(me)
    co = local_coordinates(me)
    # a cube's 12 edges join two corners that differ in one coordinate; its 6 face diagonals in two
    differ = (np.abs(co[pairs[:, 0]] - co[pairs[:, 1]]) > 1e-6).sum(axis=1)
    out.update({"all_smooth": bool(smooth.all()), "edges": len(pairs),
                "sharp_cube_edges": int(flags[differ == 1].sum()), "cube_edges": int((differ == 1).sum()),
                "sharp_diagonals": int(flags[differ == 2].sum()), "diagonals": int((differ == 2).sum()),
                "fingerprint": ob.get("sds_fingerprint")})
    return out


def refine_case(args):
    """Refine's decision and the jobs it builds, on an imported result (its checkpoint a stand-in
    file: nothing here runs it)."""
    empty_scene()
    job_builder, start_mesh = addon_module("job_builder"), addon_module("start_mesh")
    ret, err = call(bpy.ops.sds.import_result, directory=args["cube_result"])
    ob = bpy.context.view_layer.objects.active
    out = {"returned": ret, "message": err}
    if ob is None:
        return out
    ctx = bpy.context
    rna = bpy.ops.sds.refine.get_rna_type().properties
    out["operator_sources"] = [i.identifier for i in rna["source"].enum_items]
    out["operator_default"] = rna["source"].default
    out["has_camera_source"] = "camera_source" in rna.keys()

    def plan():
        return list(start_mesh.refine_plan(ob, ctx.evaluated_depsgraph_get(), "AUTO"))

    out["fresh"] = {"plan": plan(), "panel": panel_labels(ctx)}
    ob.location = (2.0, 0.0, 0.0)  # moving is not editing
    ob.rotation_euler = (0.0, 0.0, 0.3)
    ctx.view_layer.update()
    out["moved"] = {"plan": plan(), "panel": panel_labels(ctx)}

    # Edit Mode: make it 1.6x taller (bmesh on the edit mesh), and stay in Edit Mode
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(ob.data)
    for v in bm.verts:
        v.co.z *= 1.6
    bmesh.update_edit_mesh(ob.data)
    out["edited"] = {"plan": plan(), "panel": panel_labels(ctx), "mode": ob.mode}
    folder = os.path.join(args["tmp"], "refine-mesh")
    os.makedirs(folder)
    stored = json.loads(ob["sds_job"])
    job, base_dir, got = job_builder.refine_job(ctx, ob, "ORBIT", 0, "AUTO", folder)
    with np.load(job["init"]["mesh"], allow_pickle=False) as data:
        verts, colors = data["vertices"], data["colors"] if "colors" in data.files else None
    out["mesh_job"] = {"plan": list(got), "init": job["init"], "bounds": job["bounds"],
                       "stored_bounds": stored["bounds"], "base_dir": base_dir, "folder": folder,
                       "z_extent": float(np.ptp(verts[:, 2])), "x_extent": float(np.ptp(verts[:, 0])),
                       "colors": None if colors is None else [list(colors.shape), float(colors[:, 0].mean())],
                       "keep_shape": job["optim"].get("keep_shape"), "albedo_steps": job["optim"].get("albedo_steps"),
                       "mesh": job["mesh"]}
    job, base_dir, got = job_builder.refine_job(ctx, ob, "ORBIT", 0, "CHECKPOINT", folder)
    out["checkpoint_job"] = {"plan": list(got), "init": job["init"], "albedo_steps": job["optim"]["albedo_steps"],
                             "checkpoint": ob["sds_checkpoint"], "keep_shape": job["optim"].get("keep_shape")}
    bpy.ops.object.mode_set(mode="OBJECT")
    out["after_edit_mode"] = {"plan": plan(), "panel": panel_labels(ctx)}

    # an edit past the run's bounds: the bounds grow to hold it, and still hold the old box
    for v in ob.data.vertices:
        v.co.z *= 3.0
    ob.data.update()
    ctx.view_layer.update()
    folder = os.path.join(args["tmp"], "refine-grown")
    os.makedirs(folder)
    job, _base, got = job_builder.refine_job(ctx, ob, "ORBIT", 0, "AUTO", folder)
    with np.load(job["init"]["mesh"], allow_pickle=False) as data:
        verts = data["vertices"]
    out["grown"] = {"plan": list(got), "bounds": job["bounds"], "stored_bounds": stored["bounds"],
                    "lo": verts.min(axis=0).tolist(), "hi": verts.max(axis=0).tolist()}

    # the checkpoint gone: Auto starts from the mesh, even unedited
    empty_scene()
    call(bpy.ops.sds.import_result, directory=args["cube_result"])
    ob = ctx.view_layer.objects.active
    ob["sds_checkpoint"] = os.path.join(args["tmp"], "no-such-checkpoint.pt")
    out["gone"] = {"plan": plan(), "panel": panel_labels(ctx)}
    before = snapshot()
    ret, err = call(bpy.ops.sds.refine, source="CHECKPOINT")
    out["gone"]["forced"] = {"message": err, "changes": changes(before)}
    return out


# -- real runs -----------------------------------------------------------------------------------

def arrays(ob):
    """(vertices (V,3) float64 in the object's own frame, triangles (F,3))."""
    me = ob.data
    me.calc_loop_triangles()
    tris = np.empty(len(me.loop_triangles) * 3, dtype=np.int32)
    me.loop_triangles.foreach_get("vertices", tris)
    return local_coordinates(me).astype(np.float64), tris.reshape(-1, 3)


def extents(ob):
    verts, _ = arrays(ob)
    return (verts.max(axis=0) - verts.min(axis=0)).tolist()


def volume_above(verts, faces, cut: float) -> float:
    """The volume a closed triangle mesh holds above the plane z = cut: by the divergence theorem
    with the field (0, 0, max(z - cut, 0)), whose divergence is 1 above the plane and 0 below, it
    is the sum over the triangles of the integral of max(z - cut, 0) over their projection on the
    xy plane (signed by orientation). Triangles that cross the plane are clipped to their part
    above it (a triangle or a quad), exactly."""
    tri = verts[faces]

    def signed(p):  # (N,3,3) -> signed projected area times the mean height above the cut
        area = 0.5 * ((p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1])
                      - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1]))
        return float((area * (p[:, :, 2].mean(axis=1) - cut)).sum())

    above = tri[:, :, 2] >= cut
    total = signed(tri[above.all(axis=1)])
    pieces = []
    for t, up in zip(tri[above.any(axis=1) & ~above.all(axis=1)], above[above.any(axis=1) & ~above.all(axis=1)]):
        poly = []
        for i in range(3):  # Sutherland-Hodgman against z >= cut, keeping the corners' order
            a, b = t[i], t[(i + 1) % 3]
            if up[i]:
                poly.append(a)
            if up[i] != up[(i + 1) % 3]:
                w = (cut - a[2]) / (b[2] - a[2])
                poly.append(a + w * (b - a))
        pieces += [[poly[0], poly[k], poly[k + 1]] for k in range(1, len(poly) - 1)]
    if pieces:
        total += signed(np.array(pieces))
    return abs(total)


def closed(faces) -> bool:
    """Whether every edge is shared by exactly two triangles (the volume needs a closed surface)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return bool((counts == 2).all())


def twin(ob, name):
    """A copy of a generated object (its mesh copied too; its job, checkpoint and fingerprint kept)."""
    copy = ob.copy()
    copy.data = ob.data.copy()
    copy.name = name
    bpy.context.scene.collection.objects.link(copy)
    return copy


def make_active(ob):
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    ob.select_set(True)
    bpy.context.view_layer.objects.active = ob


def run_e2e(args):
    import time
    from .common import add_camera
    os.environ["OMP_NUM_THREADS"] = "1"  # the local worker inherits it: one thread a process on shared cores
    prefs = install(args["zip"])
    prefs.worker_python, prefs.model_source, prefs.device = args["worker_python"], "POCKET", "CPU"
    scene = empty_scene()
    at = (0.2, 0.1, 0.3)
    add_camera(scene, "CamFront", (0.2, -3.5, 1.0), look_at=at)
    add_camera(scene, "CamSide", (3.2, -1.0, 1.2), look_at=at)
    s = scene.sds
    s.prompt, s.seed, s.camera_source, s.start_from = "a red cube", 3, "SCENE", "ACTIVE_MESH"
    s.job_overrides = json.dumps(args["overrides"])
    out = {"timings": {}}

    # Start From = Active Mesh, through a local worker: the blockout in, a new object out
    block = blockout(scene, location=at, rotation=(0.0, 0.0, 0.0), scale=1.0, array=False)
    before = mesh_state(block)
    t = time.monotonic()
    ret, err = call(bpy.ops.sds.generate)
    out["timings"]["generate"] = round(time.monotonic() - t, 1)
    gen = bpy.context.view_layer.objects.active
    out["generate"] = {"returned": ret, "message": err}
    if ret != ["FINISHED"]:
        return out
    job = json.loads(gen["sds_job"])
    bw = np.array(block.matrix_world)
    bverts = local_coordinates(block.data).astype(np.float64) @ bw[:3, :3].T + bw[:3, 3]
    gverts, gfaces = arrays(gen)
    out["generate"].update({
        "object": object_facts(gen), "new_object": gen.name != block.name, "blockout_same": mesh_state(block) == before,
        "init_mesh": job["init"]["mesh"], "init_mesh_in_result": os.path.dirname(job["init"]["mesh"]) == gen["sds_result"]
        and os.path.isfile(job["init"]["mesh"]), "bounds": job["bounds"],
        "blockout_box": [bverts.min(axis=0).tolist(), bverts.max(axis=0).tolist()],
        "result_box": [gverts.min(axis=0).tolist(), gverts.max(axis=0).tolist()],
        "result_matrix_identity": np.allclose(np.array(gen.matrix_world), np.eye(4)), "closed": closed(gfaces),
        "keep_shape": job["optim"]["keep_shape"]})

    gen_name, block_name = gen.name, block.name  # undo below remakes the datablocks: find them by name again

    # The rest on a `serve`: the start mesh travels as an upload
    prefs.worker_mode = "REMOTE"
    prefs.remote_address, prefs.remote_token = f"127.0.0.1:{args['port']}", args["token"]
    prefs.remote_fingerprint = args["fingerprint"]  # as serve printed it
    bpy.ops.ed.undo_push(message="generated")

    # 1. 1.6x its height in Edit Mode, then Refine (Auto): the proportions of the edit are kept
    tall = twin(gen, "Tall")
    make_active(tall)
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(tall.data)
    mid = (min(v.co.z for v in bm.verts) + max(v.co.z for v in bm.verts)) / 2
    for v in bm.verts:
        v.co.z = mid + 1.6 * (v.co.z - mid)
    bmesh.update_edit_mesh(tall.data)
    bpy.ops.object.mode_set(mode="OBJECT")
    tall_state = mesh_state(tall)
    ex = extents(tall)
    tverts, _ = arrays(tall)
    case = {"panel": panel_labels(bpy.context), "edited_ratio": ex[2] / ex[0], "generated_ratio":
            extents(gen)[2] / extents(gen)[0]}
    names = sorted(o.name for o in bpy.data.objects)
    bpy.ops.ed.undo_push(message="edited")
    t = time.monotonic()
    ret, err = call(bpy.ops.sds.refine, source="AUTO", steps=args["refine_steps"])
    out["timings"]["refine_tall"] = round(time.monotonic() - t, 1)
    case.update({"returned": ret, "message": err})
    new = bpy.context.view_layer.objects.active
    if ret == ["FINISHED"]:
        rjob = json.loads(new["sds_job"])
        ex = extents(new)
        case.update({"name": new.name, "refined_ratio": ex[2] / ex[0], "init": rjob["init"],
                     "bounds": rjob["bounds"], "generated_bounds": job["bounds"],
                     "edited_box": [tverts.min(axis=0).tolist(), tverts.max(axis=0).tolist()], "steps": rjob["steps"],
                     "keep_shape": rjob["optim"]["keep_shape"], "edited_same": mesh_state(tall) == tall_state,
                     "gained": sorted(set(o.name for o in bpy.data.objects) - set(names))})
        # Background Blender pushes no undo step after an operator called from Python; the UI
        # pushes one after Refine (an UNDO operator; runner._tick for a run it followed): so here.
        bpy.ops.ed.undo_push(message="Refine")
        bpy.ops.ed.undo()
        tall = bpy.data.objects.get("Tall")
        case["after_undo"] = {"objects": sorted(o.name for o in bpy.data.objects) == names,
                              "edited_kept": tall is not None and mesh_state(tall) == tall_state}
    out["tall"] = case

    # 2. the top third deleted, then Refine (Auto): the top does not grow back
    gen = bpy.data.objects[gen_name]
    cut = twin(gen, "Cut")
    make_active(cut)
    verts, faces = arrays(cut)
    lo, hi = verts[:, 2].min(), verts[:, 2].max()
    plane = float(lo + 2.0 / 3.0 * (hi - lo))
    bm = bmesh.new()
    bm.from_mesh(cut.data)
    bmesh.ops.delete(bm, geom=[v for v in bm.verts if v.co.z > plane], context="VERTS")
    bm.to_mesh(cut.data)
    bm.free()
    cut.data.update()
    bpy.context.view_layer.update()
    case = {"panel": panel_labels(bpy.context), "plane": plane, "removed": volume_above(verts, faces, plane),
            "generated_closed": closed(faces)}
    t = time.monotonic()
    ret, err = call(bpy.ops.sds.refine, source="AUTO", steps=args["refine_steps"])
    out["timings"]["refine_cut"] = round(time.monotonic() - t, 1)
    case.update({"returned": ret, "message": err})
    new = bpy.context.view_layer.objects.active
    if ret == ["FINISHED"]:
        rverts, rfaces = arrays(new)
        case.update({"grown_back": volume_above(rverts, rfaces, plane), "refined_closed": closed(rfaces),
                     "init": json.loads(new["sds_job"])["init"], "below": volume_above(rverts, rfaces, lo)})
    out["cut"] = case

    # 3. a start mesh the engine refuses (outside the bounds an override names): the message
    #    names the client's file, not the server's folders
    make_active(bpy.data.objects[block_name])
    s = bpy.context.scene.sds
    s.camera_source = "ORBIT"
    s.job_overrides = json.dumps({**args["overrides"], "bounds": {"center": [40.0, 40.0, 40.0], "size": 2.0}})
    before = snapshot()
    ret, err = call(bpy.ops.sds.generate)
    out["refused"] = {"returned": ret, "message": err, "changes": changes(before)}
    return out
