"""bench janus: its jobs are the lab's, and one short marked run is named by the measure."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from blender_sds import kinds
from blender_sds.engine.bench import janus as bench_janus
from blender_sds.engine.pocket import metrics

REPO = Path(__file__).resolve().parents[3]


def test_each_method_is_its_guidance_keys_on_the_camera_blind_front_biased_teacher():
    args = bench_janus.parse_args(["--methods", "sds,perp-neg", "--seeds", "3", "--steps", "9",
                                   "--prompts", "a red cube with a white front; a blue sphere"])
    assert args.methods == ["sds", "perp-neg"] and args.seeds == [3]
    assert args.prompts == ["a red cube with a white front", "a blue sphere"]
    for method in args.methods:
        job = bench_janus.job_for(method, args.prompts[0], 3, args)
        g = job["guidance"]
        assert g["kind"] == "pocket" and g["pose_matched"] is False
        assert g["front_bias"] == kinds.kind("pocket").front_bias
        assert {k: g[k] for k in kinds.method(method).guidance} == kinds.method(method).guidance
        assert job["seed"] == 3 and job["steps"] == 9 and job["preset"] == bench_janus.PRESET
    biased = bench_janus.job_for("sds", args.prompts[0], 0, bench_janus.parse_args(["--front-bias", "0.6"]))
    assert biased["guidance"]["front_bias"] == 0.6 and biased["steps"] == bench_janus.STEPS
    as_preset = bench_janus.job_for("sds", args.prompts[0], 0, bench_janus.parse_args(["--steps", "0"]))
    assert as_preset["steps"] == kinds.kind("pocket").presets[bench_janus.PRESET]["steps"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "sds,magic"], "--methods: unknown 'magic'"),
    (["--prompts", "a red teapot"], "--prompts: prompt: 'a red teapot' is not in the pocket world"),
    (["--seeds", "one"], "invalid literal"),
    (["--jobs", "0"], "--jobs: must be at least 1, got 0"),
    (["--steps", "-3"], "--steps: must be 0 (the preset's) or more, got -3"),
])
def test_bad_options_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench_janus.parse_args(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_short_marked_run_reports_the_measure_by_name():
    """Two assets in two processes: each result is reported under its own prompt, in the plan's order."""
    done = subprocess.run([sys.executable, "-m", "blender_sds.engine", "bench", "janus", "--methods", "perp-neg",
                           "--prompts", "a red cube with a white front;a yellow cone", "--seeds", "0",
                           "--steps", "6", "--jobs", "2", "--override", '{"render": {"resolution": 16}, "mesh": {"resolution": 32}}',
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    figures = report["methods"]["perp-neg"]
    for key in ("janus_rate", "front_kept_rate", "shape_r_precision", "colour_r_precision", "median_chamfer",
                "median_colour_error", "saturation_ratio", "brightness_ratio", "seconds_per_asset",
                "predictions_per_step"):
        assert key in figures, key
    assert figures["marked_assets"] == 1 and figures["plain_assets"] == 1
    assert 0.0 <= figures["janus_rate"] <= 1.0 and 2.0 <= figures["predictions_per_step"] <= 4.0
    assert [r["prompt"] for r in report["results"]["perp-neg"]] == ["a red cube with a white front", "a yellow cone"]
    marked = [r for r in report["results"]["perp-neg"] if "janus" in r]
    assert len(marked) == 1 and len(marked[0]["mark_share"]) == 8
    assert figures["janus_rate"] == float(marked[0]["janus"])
    for r in report["results"]["perp-neg"]:  # a marked asset is measured against its marked truth
        assert r["truth_saturation"] == pytest.approx(metrics.truth_saturation_value(r["prompt"])[0])
