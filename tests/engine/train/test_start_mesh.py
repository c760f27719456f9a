"""Starting from the artist's mesh (init.mesh): the fit on its own, the file checks, keep_shape."""
import json

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from blender_sds.engine.scene.colour import linear_to_srgb
from blender_sds.engine.scene.field import Field, FieldConfig
from blender_sds.engine.scene.mesh_files import load_start_mesh
from blender_sds.engine.train.run import run_job
from blender_sds.engine.train.start_mesh import KeepShape, load_solid, measure_fit
from blender_sds.job import JobError, validate_job

SIZE = 2.0
RED, BLUE = (0.8, 0.05, 0.02), (0.03, 0.1, 0.6)


def soup(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Every triangle with its own corners: no two faces share a vertex, as in many exports."""
    corners = mesh.vertices[mesh.faces].reshape(-1, 3)
    return trimesh.Trimesh(corners, np.arange(len(corners)).reshape(-1, 3), process=False)


def blockout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An open box (no lid) with a taller block pushed through its floor: two primitives that
    overlap, neither closed up with the other, one not closed at all. Red box, blue block."""
    box = trimesh.creation.box(extents=(0.9, 0.7, 0.6))
    box = trimesh.Trimesh(box.vertices, box.faces[box.face_normals[:, 2] < 0.9], process=False)
    block = trimesh.creation.box(extents=(0.3, 0.3, 1.0))
    block.apply_translation((0.2, 0.0, 0.15))
    parts = [soup(box.subdivide().subdivide()), soup(block.subdivide().subdivide())]
    vertices = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([parts[0].faces, parts[1].faces + len(parts[0].vertices)])
    colors = np.concatenate([np.tile(RED, (len(parts[0].vertices), 1)), np.tile(BLUE, (len(parts[1].vertices), 1))])
    return vertices.astype(np.float32), faces.astype(np.int32), colors.astype(np.float32)


def pocket_job(mesh_path, **more) -> dict:
    return validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket"},
                         "init": {"mesh": str(mesh_path)},
                         "output": {"preview_every": 0, "checkpoint_every": 0, "progress_every": 10}, **more})


def test_fit_alone_gives_back_a_blockout_that_is_not_watertight(tmp_path, one_thread):
    """steps 0: the field fitted to an open box with a block pushed through it, meshed. The
    outer surface (the winding number's: the box's open top is closed where it is 1/2) is
    within 1.5% Chamfer of the blockout's, and colours within 0.05 of its own."""
    vertices, faces, colors = blockout()
    np.savez(tmp_path / "blockout.npz", vertices=vertices, faces=faces, colors=colors)
    out = run_job(pocket_job(tmp_path / "blockout.npz", steps=0), tmp_path / "out", device="cpu")
    fit = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
           if json.loads(line)["type"] == "fit"]
    assert len(fit) == 1 and fit[0]["iou"] > 0.85 and fit[0]["colour_error"] < 0.05, fit
    with np.load(out / "mesh.npz") as data:
        result = {k: data[k] for k in data.files}
    assert json.loads((out / "status.json").read_text())["state"] == "complete"

    truth = trimesh.Trimesh(vertices, faces, process=False)
    got = trimesh.Trimesh(result["vertices"], result["faces"], process=False)
    truth_points, truth_faces = trimesh.sample.sample_surface(truth, 40000, seed=0)
    got_points, got_faces = trimesh.sample.sample_surface(got, 40000, seed=1)
    # The block's part inside the box is blockout surface that bounds nothing: not the shape.
    import igl
    outer = np.abs(igl.fast_winding_number(vertices.astype(np.float64), faces.astype(np.int64),
                                           truth_points + 0.0) - 0.5) < 0.45
    outer |= ~((np.abs(truth_points[:, :2] - (0.2, 0.0)) < 0.15).all(1) & (truth_points[:, 2] < 0.3))
    chamfer = 0.5 * (cKDTree(truth_points[outer]).query(got_points)[0].mean()
                     + cKDTree(got_points).query(truth_points[outer])[0].mean()) / SIZE
    assert chamfer <= 0.015, chamfer

    # Colour: each result vertex against the blockout's colour at the nearest blockout point.
    _, nearest = cKDTree(truth_points).query(result["vertices"])
    want = linear_to_srgb(colors[faces[truth_faces[nearest], 0]])
    have = linear_to_srgb(result["colors"][:, :3])
    assert float(np.abs(have - want).mean()) <= 0.05


@pytest.mark.parametrize("case, problem", [
    ("no-faces", "has no faces array"),
    ("index-out", "faces index vertices 0 .. 9, but there are 3 vertices"),
    ("nan", "1 vertices are NaN or infinite"),
    ("outside", "reaches 2 from the bounds' centre along y, but the bounds (size 2) reach 1"),
    ("pickled", "Object arrays cannot be loaded"),
    ("colours-short", "colors must be (V, 3) or (V, 4) numbers for its 3 vertices"),
    ("not-zip", "is not a readable .npz (not a zip archive)"),
    ("obj-garbage", "start.obj has no faces"),
    ("sheet", "encloses no volume"),
])
def test_a_bad_start_mesh_is_refused_naming_init_mesh(tmp_path, case, problem):
    tri = np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]], dtype=np.float32)
    path = tmp_path / "start.npz"
    arrays = {"vertices": tri, "faces": np.array([[0, 1, 2]], dtype=np.int32)}
    if case == "no-faces":
        del arrays["faces"]
    elif case == "index-out":
        arrays["faces"] = np.array([[0, 1, 9]], dtype=np.int32)
    elif case == "nan":
        arrays["vertices"] = tri.copy()
        arrays["vertices"][1, 0] = np.nan
    elif case == "outside":
        arrays["vertices"] = tri + np.float32([0, 1.5, 0])
    elif case == "pickled":
        arrays["vertices"] = np.array([object()] * 3, dtype=object)
    elif case == "colours-short":
        arrays["colors"] = np.ones((2, 3), dtype=np.float32)
    if case == "not-zip":
        path.write_bytes(b"not a zip")
    elif case == "obj-garbage":
        path = tmp_path / "start.obj"
        path.write_text("this is no mesh\n")
    else:
        np.savez(path, **arrays)
    with pytest.raises(JobError) as info:
        if case == "sheet":
            load_solid(str(path), (0, 0, 0), SIZE)
        else:
            load_start_mesh(str(path), (0, 0, 0), SIZE)
    assert info.value.key == "init.mesh"
    assert problem in info.value.problem, info.value.problem
    assert len(str(info.value)) <= 300


def test_other_formats_come_through_trimesh_with_their_colours(tmp_path):
    box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    box.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(box.vertices), 1))
    box.export(tmp_path / "box.ply")
    mesh = load_start_mesh(str(tmp_path / "box.ply"), (0, 0, 0), SIZE)
    assert mesh.faces.shape == (12, 3) and np.allclose(mesh.vertices, box.vertices)
    assert np.allclose(mesh.colors, [1.0, 0.0, 0.0])  # sRGB bytes read as linear light


def test_keep_shape_pulls_the_field_to_the_mesh_and_its_schedule_falls(tmp_path, one_thread):
    """A blob field, the loss alone, 60 Adam steps: the occupancy IoU with a small off-centre box
    rises from the blob's; `linear` is 1/2 of the weight half way and 0 at the end."""
    box = trimesh.creation.box(extents=(0.5, 0.4, 0.3))
    box.apply_translation((0.3, 0.0, 0.2))
    np.savez(tmp_path / "box.npz", vertices=box.vertices, faces=box.faces)
    solid = load_solid(str(tmp_path / "box.npz"), (0, 0, 0), SIZE)
    field = Field([0, 0, 0], SIZE, FieldConfig.for_preset("pocket"))
    generator = torch.Generator().manual_seed(0)
    before = measure_fit(field, solid, torch.Generator().manual_seed(1))["iou"]
    keep = KeepShape(solid, 1.0, "constant", generator)
    opt = torch.optim.Adam(field.parameter_groups(0.03), betas=(0.9, 0.99), eps=1e-15)
    for step in range(60):
        opt.zero_grad()
        keep.loss(field, step, 60).backward()
        opt.step()
    after = measure_fit(field, solid, torch.Generator().manual_seed(1))["iou"]
    assert after > before + 0.3 and after > 0.6, (before, after)
    linear = KeepShape(solid, 2.0, "linear", generator)
    assert (linear.weight_at(0, 100), linear.weight_at(50, 100), linear.weight_at(100, 100)) == (2.0, 1.0, 0.0)
    assert linear.loss(field, 100, 100) is None


def test_the_start_meshs_coverage_is_its_silhouette_from_the_renderers_rays(tmp_path):
    """A box's coverage, from three cameras, equals where the renderer's rays meet the box
    (ray_box, exact): pixels may differ only along the outline, where a ray passes within a
    grid cell of an edge."""
    from blender_sds.engine.scene.cameras import fixed_views, ray_bundle
    from blender_sds.engine.scene.renderer import ray_box

    side, at = 0.6, (0.2, -0.1, 0.1)
    box = trimesh.creation.box(extents=(side, side, side))
    box.apply_translation(at)
    np.savez(tmp_path / "box.npz", vertices=box.vertices, faces=box.faces)
    solid = load_solid(str(tmp_path / "box.npz"), (0, 0, 0), SIZE)
    views = fixed_views([0, 0, 0], SIZE, (0.0, 60.0, 150.0), 20.0, 64)
    covered = solid.coverage(views)
    origins, dirs = (x.reshape(-1, 3) for x in ray_bundle(views))
    near, far = ray_box(origins, dirs, torch.tensor(at, dtype=torch.float32), side)
    truth = (far > near).float().view_as(covered)
    assert covered.shape == (3, 1, 64, 64) and set(covered.unique().tolist()) <= {0.0, 1.0}
    differ = covered != truth
    # The outline: pixels with a neighbour of the other class in the truth.
    t = truth[:, 0]
    edge = torch.zeros_like(t, dtype=torch.bool)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        edge |= t != torch.roll(t, (dy, dx), dims=(1, 2))
    assert not (differ[:, 0] & ~edge).any()
    assert differ.sum() <= 0.1 * truth.sum(), (int(differ.sum()), int(truth.sum()))
