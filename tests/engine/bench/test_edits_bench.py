"""bench edits: the two edits are the issue's, the refine is the add-on's, the volumes are right."""
import json

import numpy as np
import pytest
import trimesh

from blender_sds.engine.bench import edits


def box(extents=(0.8, 0.6, 1.0), at=(0.1, 0.0, -0.1)):
    mesh = trimesh.creation.box(extents=extents)
    mesh.apply_translation(at)
    colors = np.ones((len(mesh.vertices), 4), np.float32)
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32), colors


def test_tall_stretches_the_height_about_the_middle_and_cut_opens_the_top():
    vertices, faces, colors = box()
    tall, measure = edits.edited(vertices, faces, colors, "tall")
    extent = tall["vertices"].max(0) - tall["vertices"].min(0)
    np.testing.assert_allclose(extent, [0.8, 0.6, 1.6], rtol=1e-6)
    assert tall["vertices"][:, 2].mean() == pytest.approx(vertices[:, 2].mean(), abs=1e-6)
    assert measure["edited_ratio"] == pytest.approx(1.6 / 0.8)
    # A subdivided box, so that faces lie wholly under the plane at 2/3 of the height.
    fine = trimesh.creation.box(extents=(0.8, 0.6, 1.0)).subdivide().subdivide()
    v, f = np.asarray(fine.vertices, np.float32), np.asarray(fine.faces, np.int32)
    cut, measure = edits.edited(v, f, np.ones((len(v), 4), np.float32), "cut")
    assert measure["plane"] == pytest.approx(-0.5 + 2 / 3, abs=1e-6)
    assert cut["vertices"][:, 2].max() <= measure["plane"] + 1e-6 and len(cut["faces"]) < len(f)
    assert not trimesh.Trimesh(cut["vertices"], cut["faces"]).is_watertight  # an open mesh, as an artist leaves it


def test_volume_above_a_plane_counts_the_inside_also_of_an_open_mesh():
    vertices, faces, _ = box()  # 0.8 x 0.6 x 1.0, z from -0.6 to 0.4
    bounds = {"center": [0.0, 0.0, 0.0], "size": 2.0}
    cell = 2.0 / 128
    # The grid's error is the cells the surface crosses: about a cell's depth over the cut's area and sides.
    slack = cell * (0.8 * 0.6 + 2 * (0.8 + 0.6) * 0.5)
    assert edits.volume_above(vertices, faces, -0.1, bounds) == pytest.approx(0.8 * 0.6 * 0.5, abs=slack)
    assert edits.volume_above(vertices, faces, 0.5, bounds) == 0.0
    open_top = faces[~(vertices[faces][:, :, 2] > 0.3).all(axis=1)]  # the lid's two faces gone
    assert len(open_top) == len(faces) - 2
    assert edits.volume_above(vertices, open_top, -0.1, bounds) == pytest.approx(0.24, abs=2 * slack)


def test_the_refine_is_the_add_ons_from_the_mesh(tmp_path):
    args = edits.parse_args(["--steps", "12", "--keep-shape", "3"])
    generated = edits.generation_job("a green cube", args)
    assert generated["guidance"]["kind"] == "pocket" and generated["steps"] == 12
    start = tmp_path / edits.START_FILE
    vertices, faces, colors = box(extents=(0.8, 0.6, 2.4))  # taller than the bounds (size 2): they grow
    np.savez(start, vertices=vertices, faces=faces, colors=colors)
    job = edits.refine_job(json.loads(json.dumps(generated)), start, vertices, args)
    assert job["init"] == {"mesh": str(start), "checkpoint": None, "resume": False}
    assert job["optim"]["keep_shape"] == 3.0 and job["steps"] == 12
    center, half = np.array(job["bounds"]["center"]), job["bounds"]["size"] / 2
    assert (center - half <= vertices.min(0)).all() and (vertices.max(0) <= center + half).all()
    assert (center - half <= -1.0 + 1e-6).all() and (center + half >= 1.0 - 1e-6).all()  # and the old box
    inside = edits.refine_job(generated, start, vertices * 0.5, edits.parse_args([]))
    assert inside["bounds"] == generated["bounds"] and inside["optim"]["keep_shape"] == 10.0


@pytest.mark.parametrize("argv, message", [
    (["--cases", "tall,bend"], "--cases: unknown 'bend'"),
    (["--keep-shape", "-1"], "--keep-shape: must be 0 or more"),
    (["--jobs", "0"], "--jobs: must be at least 1, got 0"),
])
def test_bad_options_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        edits.parse_args(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_bench_runs_both_edits_end_to_end(tmp_path, capsys):
    """A short run of the whole bench (20 steps): each case reports its own measure."""
    assert edits.main(["--steps", "20", "--prompts", "a red cube", "--jobs", "1", "--out", str(tmp_path),
                       "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tall, cut = out["results"]
    assert (tall["case"], cut["case"]) == ("tall", "cut") and tall["steps"] == cut["steps"] == 20
    assert tall["edited_ratio"] == pytest.approx(1.6 * tall["generated_ratio"], rel=1e-3)
    assert tall["refined_ratio"] > 0 and tall["ratio_error"] == pytest.approx(
        tall["refined_ratio"] / tall["edited_ratio"] - 1)
    assert cut["removed"] > 0 and 0 <= cut["grown_fraction"] <= 1
    assert (tmp_path / "a_red_cube" / "cut" / edits.START_FILE).is_file()
