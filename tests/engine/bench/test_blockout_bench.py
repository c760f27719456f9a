"""bench blockout: its starts are keep_shape settings on the camera-blind teacher, refused when malformed."""
from pathlib import Path

import numpy as np
import pytest

from blender_sds.engine.bench import blockout as bench_blockout
from blender_sds.engine.pocket import metrics
from blender_sds.engine.pocket.blockout import APEX_SHIFT, rough_pyramid


def test_each_start_is_its_keep_shape_on_the_camera_blind_teacher(tmp_path):
    args = bench_blockout.parse_args(["--starts", "blob,0.5,2:linear", "--colours", "red,white", "--steps", "7"])
    assert args.starts == ["blob", "0.5", "2:linear"] and args.colours == ["red", "white"]
    blob = bench_blockout.job_for("blob", "red", args, tmp_path)
    assert blob["init"]["mesh"] is None and blob["optim"]["keep_shape"] == 0
    (tmp_path / bench_blockout.BLOCKOUT_FILE).write_bytes(b"")  # validation checks it exists, not its content
    kept = bench_blockout.job_for("2:linear", "white", args, tmp_path)
    assert kept["init"]["mesh"] == str(tmp_path / bench_blockout.BLOCKOUT_FILE)
    assert (kept["optim"]["keep_shape"], kept["optim"]["keep_shape_schedule"]) == (2.0, "linear")
    for job in (blob, kept):
        assert job["guidance"]["kind"] == "pocket" and job["guidance"]["pose_matched"] is False
        assert job["steps"] == 7 and job["prompt"].endswith(" pyramid")


@pytest.mark.parametrize("argv, message", [
    (["--starts", "blob,lots"], "'blob', or a keep_shape weight"),
    (["--starts", "1:cosine"], "schedule must be one of constant, linear"),
    (["--colours", "red,teal"], "--colours: unknown 'teal'"),
    (["--jobs", "0"], "--jobs: must be at least 1, got 0"),
])
def test_bad_options_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench_blockout.parse_args(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_rough_pyramid_is_a_jagged_soup_with_its_apex_off_centre():
    bounds = {"center": [1.0, 0.0, 0.5], "size": 4.0}
    mesh = rough_pyramid(0, bounds)
    v, f = mesh["vertices"], mesh["faces"]
    assert len(np.unique(f)) == 3 * len(f)  # no corner shared: not watertight
    top = v[np.argmax(v[:, 2])]
    assert abs((top[0] - 1.0) / 4.0 - APEX_SHIFT) < 0.05  # the apex, in bounds sizes from the centre
    mesh["colors"] = np.ones((len(v), 4), np.float32)
    chamfer = metrics.mesh_chamfer(mesh, "a red pyramid", bounds)
    assert 0.005 < chamfer < 0.04, chamfer  # rough, yet a pyramid's size and place
