"""SDS must reconstruct a known object: the whole engine against ground truth.

A two-coloured box with corners is ray-cast analytically (blender_sds.scenes, numpy: not
the engine's renderer) from 32 cameras; the engine runs the reference-views teacher on
those images through the same noise, timestep, weighting and CFG code as Stable
Diffusion, and the extracted mesh is measured against the box's exact surface and
colours.
"""
import numpy as np

from blender_sds import scenes
from blender_sds.engine.train.run import run_job
from blender_sds.job import load_job
from measure import box_scores

VIEWS, SIZE, STEPS = 32, 48, 300


def test_reference_views_reconstruct_the_box(tmp_path):
    job_file = scenes.write_reference_job(tmp_path / "job", views=VIEWS, size=SIZE, steps=STEPS)
    job = load_job(job_file)
    out = run_job(job, tmp_path / "out", device="cpu")
    mesh = dict(np.load(out / "mesh.npz"))
    scores = box_scores(mesh)
    print(f"reconstruction: {len(mesh['faces'])} faces, {scores}")
    assert scores["chamfer"] <= 0.02, scores
    assert scores["colour_error"] <= 0.1, scores
    # The colours are in the right places: vertices above the middle are red, below blue.
    top = mesh["vertices"][:, 2] > scenes.CENTER[2] + 0.1
    bottom = mesh["vertices"][:, 2] < scenes.CENTER[2] - 0.1
    red, blue = scenes.srgb_to_linear(scenes.TOP_SRGB), scenes.srgb_to_linear(scenes.BOTTOM_SRGB)
    assert np.abs(mesh["colors"][top, :3].mean(0) - red).max() < 0.1
    assert np.abs(mesh["colors"][bottom, :3].mean(0) - blue).max() < 0.1
