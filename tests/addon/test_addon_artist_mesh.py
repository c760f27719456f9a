"""The artist's mesh both ways (issue 14, the add-on half): Start From = Active Mesh sends the
blockout as `init.mesh`; results come back at a Face Budget with smooth-but-creased shading and
a fingerprint; Refine's Auto source continues the checkpoint while the mesh is as generated and
starts from the mesh once the artist edited it.

`test_artist_mesh_jobs` runs no worker (both Blender versions: it reads evaluated meshes, colour
attributes, Edit Mode and the sharp-edge attribute, where bpy versions differ); the runs are in
`test_artist_mesh_end_to_end` (newest Blender, pocket world, tiny renders)."""
import json
import math

import numpy as np
import pytest

from blender_sds import job as job_schema
from bpy_harness import HUB_MODEL, TINY_OVERRIDES
from serve_client import TOKEN

CUBE = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=np.float32)
# outward triangles of the cube above (index = 4x + 2y + z over the corners' 0/1 bits)
CUBE_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                       [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=np.int32)
BOUNDS = {"center": [0.0, 0.0, 0.0], "size": 2.0}


@pytest.fixture
def cube_result(tmp_path):
    """A result folder as the engine writes it (mesh.npz, job.json) for a cube, with a stand-in
    checkpoint file: nothing runs it, Refine's decision only needs it to exist."""
    folder = tmp_path / "cube-result"
    folder.mkdir()
    colors = np.tile(np.array([[0.8, 0.1, 0.1, 1.0]], dtype=np.float32), (8, 1))
    np.savez(folder / "mesh.npz", vertices=CUBE, faces=CUBE_FACES, colors=colors)
    job = job_schema.validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket"},
                                   "bounds": BOUNDS, "steps": 2, "preset": "draft"})
    (folder / "job.json").write_text(job_schema.dumps(job))
    (folder / "checkpoint.pt").write_bytes(b"stand-in")
    return str(folder)


def test_artist_mesh_jobs(blender, run_scenario, cube_result):
    facts = run_scenario(blender, "artist_mesh", cube_result=cube_result)

    # Start From = Active Mesh: the blockout's evaluated geometry in world space, its colours linear
    sf = facts["start_from"]
    assert sf["default"] == "BLOB" and sf["items"] == ["BLOB", "ACTIVE_MESH"]
    assert "start_from" in sf["panel"] and "label:From 'Blockout' (modifiers applied)" in sf["panel"]
    assert "label:Bounds: around the mesh" in sf["panel"] and "bounds_size" not in sf["panel"]
    assert sf["message"] == "", sf["message"]
    assert sf["init"] == {"mesh": "job_init_mesh.npz"}  # beside the exported job, which travels with it
    assert sf["npz_keys"] == ["colors", "faces", "vertices"]
    assert sf["dtypes"] == ["float32", "int32", "float32"]
    assert sf["shapes"] == [[32, 3], [48, 3], [32, 4]]  # two cubes, their Array copy; triangulated
    assert sf["world_match"] and sf["faces_in_range"]
    margin = 1 + 2 * 0.1
    assert np.allclose(sf["bounds"]["center"], sf["expected_center"], atol=1e-5)
    assert math.isclose(sf["bounds"]["size"], margin * sf["expected_extent"], rel_tol=1e-5)
    assert sf["color_count"] == [16, 16]
    assert np.allclose(sf["first_color"][:3], sf["expected_first"], atol=4e-3)  # byte sRGB 0.5 -> ~0.214 linear
    assert np.allclose(sf["second_color"][:3], sf["expected_second"], atol=4e-3)
    assert sf["first_color"][3] == 1.0
    assert sf["unchanged"] and sf["objects"] == ["Blockout"]

    errors = facts["errors"]
    for case, words in {"no_active": ["no object is active", "Start From to Blob"],
                        "not_a_mesh": ["'Cam' is a camera, not a mesh", "Convert"],
                        "no_faces": ["has no faces", "Start From to Blob"],
                        "outside_bounds_object": ["outside the box of Bounds Object 'Box'", "clear Bounds Object"]
                        }.items():
        got = errors[case]
        assert not got["job"] and got["scene_same"], (case, got)
        for word in words:
            assert word in got["message"], (case, word, got["message"])
        assert "Traceback" not in got["message"]
        assert got["files"] == [], (case, got)  # no job, no mesh file left behind
    inside = errors["inside_bounds_object"]
    assert inside["message"] == "" and np.allclose(inside["bounds"]["center"], inside["box"][0])
    assert math.isclose(inside["bounds"]["size"], 6.0, rel_tol=1e-6)

    budget = facts["budget"]
    assert budget["defaults"] == [job_schema.DEFAULT_TARGET_FACES, job_schema.DEFAULT_SMOOTH]
    assert "face_budget" in budget["panel"] and "smoothing" in budget["panel"]
    assert "bounds_size" in budget["panel"]  # Blob: the cube at the 3D cursor as before
    assert budget["default_job"] == {**budget["default_job"], "target_faces": job_schema.DEFAULT_TARGET_FACES,
                                     "smooth": job_schema.DEFAULT_SMOOTH}
    assert budget["set_job"] == {**budget["set_job"], "target_faces": 5000, "smooth": 3}
    assert budget["all_job"]["target_faces"] == 0
    assert "mesh.target_faces" in budget["bad"] and "Face Budget in the SDS panel" in budget["bad"]

    # Import: smooth shading, sharp where the faces fold past 30 degrees; the fingerprint kept
    imp = facts["import"]
    assert imp["returned"] == ["FINISHED"], imp["message"]
    assert imp["all_smooth"] and imp["edges"] == 18
    assert imp["cube_edges"] == 12 and imp["sharp_cube_edges"] == 12  # 90 degrees: sharp
    assert imp["diagonals"] == 6 and imp["sharp_diagonals"] == 0  # flat: smooth
    assert isinstance(imp["fingerprint"], str) and len(imp["fingerprint"]) == 32

    # Refine: Auto continues the checkpoint until the mesh is edited, then starts from the mesh
    ref = facts["refine"]
    assert ref["returned"] == ["FINISHED"], ref["message"]
    assert ref["operator_sources"] == ["AUTO", "CHECKPOINT", "MESH"] and ref["operator_default"] == "AUTO"
    assert ref["has_camera_source"]
    for state in ("fresh", "moved"):
        assert ref[state]["plan"][0] == "CHECKPOINT", (state, ref[state])
        assert any("continue the checkpoint" in t for t in ref[state]["panel"]), (state, ref[state])
    assert ref["edited"]["mode"] == "EDIT"  # decided from the edit mesh, before leaving Edit Mode
    assert ref["edited"]["plan"] == ["MESH", "Refine will start from your edited mesh"]
    assert "Refine will start from your edited mesh" in ref["edited"]["panel"]
    mj = ref["mesh_job"]
    assert mj["plan"][0] == "MESH"
    assert mj["init"]["checkpoint"] is None and mj["init"]["mesh"].startswith(mj["folder"])
    assert mj["init"]["mesh"].endswith("init_mesh.npz") and mj["base_dir"] == mj["folder"]
    assert mj["bounds"] == mj["stored_bounds"] == BOUNDS  # the run's bounds kept: the mesh fits
    assert math.isclose(mj["z_extent"], 1.6, rel_tol=1e-5)  # the object's own frame: moving it changed nothing
    assert math.isclose(mj["x_extent"], 1.0, rel_tol=1e-5)
    assert mj["colors"][0] == [8, 4] and math.isclose(mj["colors"][1], 0.8, rel_tol=1e-3)  # its Col attribute
    assert mj["keep_shape"] is None and mj["albedo_steps"] is None  # a start mesh's defaults apply
    assert mj["mesh"]["target_faces"] == job_schema.DEFAULT_TARGET_FACES  # the panel's, whatever the run had
    assert mj["mesh"]["smooth"] == job_schema.DEFAULT_SMOOTH
    cj = ref["checkpoint_job"]
    assert cj["plan"][0] == "CHECKPOINT" and cj["init"] == {"checkpoint": cj["checkpoint"], "resume": False}
    assert cj["albedo_steps"] == 0 and cj["keep_shape"] is None
    assert ref["after_edit_mode"]["plan"][0] == "MESH"
    assert any("edited mesh" in t for t in ref["after_edit_mode"]["panel"])
    grown = ref["grown"]
    assert grown["plan"][0] == "MESH"
    c, half = np.array(grown["bounds"]["center"]), grown["bounds"]["size"] / 2
    assert (np.array(grown["lo"]) >= c - half).all() and (np.array(grown["hi"]) <= c + half).all()
    old_c, old_half = np.array(BOUNDS["center"]), BOUNDS["size"] / 2
    assert (c - half <= old_c - old_half + 1e-6).all() and (c + half >= old_c + old_half - 1e-6).all()
    gone = ref["gone"]
    assert gone["plan"][0] == "MESH" and "checkpoint is gone" in gone["plan"][1]
    assert any("checkpoint is gone" in t for t in gone["panel"])
    assert "checkpoint" in gone["forced"]["message"] and "is gone" in gone["forced"]["message"]
    assert gone["forced"]["changes"] == {}

    # a remote worker gets the start mesh as an upload, .npz only; its words name our file
    remote = facts["remote"]
    npz = remote["my blockout.npz"]
    assert npz["mesh"] == "init/my_blockout.npz" and npz["files"] == [["init/my_blockout.npz", npz["local"]]]
    obj = remote["blockout.obj"]
    assert obj["key"] == "init.mesh" and "only as .npz" in obj["refused"] and "blockout.obj" in obj["refused"]
    assert remote["ours"] == f"init.mesh: '{npz['local']}' was not uploaded"


# -- real runs -----------------------------------------------------------------------------------

# Refine's steps in the acceptance cases, passed as the operator's `steps`: the pocket world's
# own default (its draft preset's 400) takes minutes a run on two shared cores. The same two
# edits over a full-length refine are measured by `bench edits` (docs/QUALITY.md "Starting from a mesh").
REFINE_STEPS = 40
# Fine enough that one marching-cubes cell is a few percent of the asset, for the ratios below.
E2E_OVERRIDES = {**TINY_OVERRIDES, "mesh": {"resolution": 48}}


def test_artist_mesh_end_to_end(newest_blender, run_scenario, server):
    serve_tmp, port = server
    facts = run_scenario(newest_blender, "artist_mesh_e2e", model=HUB_MODEL, port=port, token=TOKEN,
                         server_root=str(serve_tmp / "root"), overrides=E2E_OVERRIDES, refine_steps=REFINE_STEPS)
    print(newest_blender, facts["timings"])
    print(json.dumps({k: v for k, v in facts.items() if not k.startswith("_")}, default=str)[:8000])

    # Start From = Active Mesh through a local worker: a new object shaped like the blockout
    gen = facts["generate"]
    assert gen["returned"] == ["FINISHED"], gen["message"]
    assert gen["new_object"] and gen["blockout_same"] and gen["result_matrix_identity"]
    assert gen["init_mesh_in_result"] and gen["keep_shape"] == job_schema.DEFAULT_KEEP_SHAPE
    lo, hi = (np.array(b) for b in gen["blockout_box"])
    extent = (hi - lo).max()
    assert np.allclose(gen["bounds"]["center"], (lo + hi) / 2, atol=1e-5)
    assert math.isclose(gen["bounds"]["size"], 1.2 * extent, rel_tol=1e-5)
    rlo, rhi = (np.array(b) for b in gen["result_box"])
    assert np.abs(rlo - lo).max() < 0.1 * extent and np.abs(rhi - hi).max() < 0.1 * extent, (gen["result_box"], lo, hi)
    assert gen["object"]["col"] == ["FLOAT_COLOR", "POINT"]

    # 1.6x taller in Edit Mode, Refine (Auto, on the server): the edit's proportions kept
    tall = facts["tall"]
    assert "Refine will start from your edited mesh" in tall["panel"], tall["panel"]
    assert tall["returned"] == ["FINISHED"], tall["message"]
    assert tall["init"]["checkpoint"] is None and tall["init"]["mesh"].endswith("init_mesh.npz")
    assert tall["steps"] == REFINE_STEPS and tall["keep_shape"] == job_schema.DEFAULT_KEEP_SHAPE
    # 1.6x taller no longer fits the generated run's bounds: they grow to hold the edit and the old box
    c, half = np.array(tall["bounds"]["center"]), tall["bounds"]["size"] / 2
    old_c, old_half = np.array(tall["generated_bounds"]["center"]), tall["generated_bounds"]["size"] / 2
    assert half > old_half
    assert (c - half <= np.array(tall["edited_box"][0])).all() and (np.array(tall["edited_box"][1]) <= c + half).all()
    assert (c - half <= old_c - old_half + 1e-6).all() and (old_c + old_half <= c + half + 1e-6).all()
    assert math.isclose(tall["edited_ratio"], 1.6 * tall["generated_ratio"], rel_tol=1e-3)
    assert abs(tall["refined_ratio"] / tall["edited_ratio"] - 1) <= 0.10, tall
    assert tall["edited_same"] and tall["gained"] == [tall["name"]]
    assert tall["after_undo"] == {"objects": True, "edited_kept": True}  # undo takes the result back, only it

    # the top third deleted, Refine (Auto): the top does not grow back
    cut = facts["cut"]
    assert "Refine will start from your edited mesh" in cut["panel"], cut["panel"]
    assert cut["returned"] == ["FINISHED"], cut["message"]
    assert cut["init"]["checkpoint"] is None
    assert cut["generated_closed"] and cut["refined_closed"]  # the volumes below need closed surfaces
    assert cut["removed"] > 0.05 * cut["below"], cut
    assert cut["grown_back"] <= 0.2 * cut["removed"], cut

    # a start mesh the engine refuses: named by the client's file, never the server's folders
    refused = facts["refused"]
    assert refused["returned"] is None
    assert "init.mesh" in refused["message"] and "init_mesh.npz" in refused["message"], refused
    assert str(serve_tmp) not in refused["message"], refused
    assert refused["changes"] in ({}, {"images": {"gained": ["SDS Preview"], "lost": []}}), refused

