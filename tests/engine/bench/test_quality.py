"""bench quality: which prompts it runs, how it reads its options, how it sums up (the runs themselves: test_pocket_job)."""
import json

import pytest

from blender_sds.kinds.pocket import PRESETS as POCKET_PRESETS
from blender_sds.engine.bench import quality as bench_quality
from blender_sds.engine.pocket import world


@pytest.mark.parametrize("n", [12, 20, 36])
def test_the_sample_covers_every_shape_and_colour_without_repeats(n):
    sample = bench_quality.covering_sample(n, seed=5)
    assert len(sample) == len(set(sample)) == n
    parsed = [world.parse_prompt(p) for p in sample]
    assert {c for c, _ in parsed} == set(world.COLOUR_NAMES)
    assert {s for _, s in parsed} == set(world.SHAPE_NAMES)
    assert bench_quality.covering_sample(n, seed=5) == sample
    if n < 36:
        assert bench_quality.covering_sample(n, seed=6) != sample
    else:
        assert set(sample) == set(world.PROMPTS)


def test_options_build_validated_jobs():
    args = bench_quality.parse_args(["--prompt", "A Red Cube", "--steps", "7", "--preset", "draft",
                                     "--override", json.dumps({"optim": {"opaque": 5}, "render": {"resolution": 24}})])
    assert bench_quality.prompts_for(args) == ["a red cube"]
    job = bench_quality.job_for("a red cube", args)
    assert job["guidance"]["kind"] == "pocket" and job["steps"] == 7 and job["preset"] == "draft"
    assert job["optim"]["opaque"] == 5 and job["render"]["resolution"] == 24
    assert job["render"]["samples"] == POCKET_PRESETS["draft"]["render"]["samples"]  # the rest from the preset
    assert bench_quality.prompts_for(bench_quality.parse_args(["--all"])) == list(world.PROMPTS)


@pytest.mark.parametrize("argv, message", [
    (["--sample", "5"], "--sample: must be 12 .. 36"),
    (["--prompt", "a teapot"], "--prompt: prompt: 'a teapot' is not in the pocket world"),
    (["--override", "[1]"], "--override: must be a JSON object"),
    (["--override", "{"], "--override: not JSON"),
    (["--threads", "0"], "--threads: must be >= 1"),
])
def test_bad_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        bench_quality.parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_override_stops_before_any_run(capsys):
    assert bench_quality.main(["--prompt", "a red cube", "--override", '{"optim": {"opaque": -1}}']) == 2
    captured = capsys.readouterr()
    assert "optim.opaque" in captured.err and captured.out == ""


def test_summary_counts_failures_as_wrong():
    good = {"prompt": "a red cube", "chamfer": 0.02, "colour_error": 0.05, "shape_ok": True, "colour_ok": True,
            "seconds": 10.0, "saturation": 0.9, "truth_saturation": 0.8, "brightness": 0.6, "truth_brightness": 0.8}
    odd = dict(good, chamfer=0.04, colour_error=0.01, shape_ok=False, seconds=30.0, saturation=0.3,
               truth_saturation=0.0)
    failed = {"prompt": "a blue torus", "error": "no surface", "chamfer": None, "colour_error": None,
              "shape_ok": False, "colour_ok": False, "seconds": 5.0,
              **{key: None for key in bench_quality.COLOUR_FIGURES}}
    total = bench_quality.summarise([good, odd, failed])
    assert total["shape_r_precision"] == pytest.approx(1 / 3) and total["colour_r_precision"] == pytest.approx(2 / 3)
    assert total["median_chamfer"] == 0.04 and total["median_colour_error"] == 0.05
    # Pooled over the assets with figures: (0.9 + 0.3) / (0.8 + 0), the failed run not counted.
    assert total["saturation_ratio"] == pytest.approx(1.5) and total["brightness_ratio"] == pytest.approx(0.75)
    assert total["seconds_per_asset"] == pytest.approx(15.0) and total["max_seconds"] == 30.0
    assert bench_quality.summarise([failed])["median_chamfer"] is None
    assert bench_quality.summarise([failed])["saturation_ratio"] is None
    json.dumps(total)
