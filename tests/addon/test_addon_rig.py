"""Rig accuracy: the exported job's camera records project world points to the same pixels as
Blender's own world_to_camera_view, for landscape/portrait, AUTO/VERTICAL/HORIZONTAL fit,
shift, resolution percentage and pixel aspect, with a scaled camera object."""
import math

from bpy_harness import HUB_MODEL


def test_job_intrinsics_match_blender(blender, run_scenario):
    facts = run_scenario(blender, "rig", model=HUB_MODEL)
    cases = {k: v for k, v in facts.items() if not k.startswith("_") and k != "blender"}
    assert set(cases) == {"landscape_auto", "portrait_auto_shift", "vertical_shift_y", "pixel_aspect_2",
                          "pixel_aspect_y2_auto"}
    for name, case in cases.items():
        assert "error" not in case, (name, case)
        assert case["max_px_error"] < 1e-3, (name, case)
        assert case["orthonormal_error"] < 1e-5, (name, case)  # scale removed from matrix_world
        assert case["record"]["type"] == "PERSP" and case["record"]["name"] == "Cam"
    assert (cases["portrait_auto_shift"]["width"], cases["portrait_auto_shift"]["height"]) == (540, 960)
    # A portrait AUTO frame fits the sensor to its height: fx is set by the larger side.
    p = cases["portrait_auto_shift"]["record"]
    assert math.isclose(p["fx"], 50 / 36 * 960, rel_tol=1e-9)
    # Pixel aspect 2 (x) halves fy relative to fx.
    a = cases["pixel_aspect_2"]["record"]
    assert math.isclose(a["fy"], 2 * a["fx"], rel_tol=1e-9)
