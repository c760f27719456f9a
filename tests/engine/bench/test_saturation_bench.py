"""bench saturation: each method is its registry guidance on the pose-matched pocket world, two
baselines are SDS at the kind's two scales, bad options are refused by flag, and one short run
reports every figure per method with the judge's predictions per step that its rule asks for."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from blender_sds import kinds
from blender_sds.engine.bench import quality as bench_quality
from blender_sds.engine.bench import saturation as bench_saturation
from blender_sds.engine.pocket import metrics
from blender_sds.job import NORMAL_CFG_RAMP

REPO = Path(__file__).resolve().parents[3]
POCKET = kinds.kind("pocket")
# The judge's evaluations a step per image (rules/): CFG's pair; NFSD and CSD add the empty
# prompt to the prompt and the published negative; VSD adds its estimator's camera pass, its
# training pass and the judge's prompt pass at the training sample (the pocket's estimator builds
# on it), ESD (lambda 0.5) the estimator's camera-free pass as well.
# "sds-7.5" when the kind samples at 7.5: SDS at its sampling_scale, named by it.
AT_SAMPLING = bench_saturation.SDS_AT_SAMPLING
PREDICTIONS = {"sds": 2, AT_SAMPLING: 2, "nfsd": 3, "csd": 3, "vsd": 4, "esd": 5}
FIGURES = ("saturation_ratio", "brightness_ratio", "median_colour_error", "shape_r_precision",
           "colour_r_precision", "median_chamfer", "seconds_per_asset", "predictions_per_step", "peak_memory_mb",
           "peak_memory_measure", "assets", "failed")
# Toy sizes: an asset's fixed costs (the teacher's set-up, the final preview, the mesh, the
# yardstick's renders) are most of its seconds.
OVERRIDE = json.dumps({"render": {"resolution": 16, "samples": 16}, "mesh": {"resolution": 24}})


def test_the_default_bench_is_the_six_methods_over_bench_qualitys_sample():
    args = bench_saturation.parse_args([])
    assert AT_SAMPLING == f"sds-{POCKET.sampling_scale:g}"
    assert args.methods == ["sds", AT_SAMPLING, "nfsd", "csd", "vsd", "esd"] == list(PREDICTIONS)
    assert args.prompts == bench_quality.covering_sample(bench_quality.DEFAULT_SAMPLE, 0)
    assert len(args.prompts) >= 12 and args.seeds == [0] and args.preset == "standard" and args.steps == 0


@pytest.mark.parametrize("method", list(PREDICTIONS))
def test_each_method_is_its_guidance_keys_on_the_pose_matched_pocket_world(method):
    args = bench_saturation.parse_args(["--methods", method, "--seeds", "4", "--steps", "9"])
    job = bench_saturation.job_for(method, "a red cube", 4, args)
    g = job["guidance"]
    assert g["kind"] == "pocket" and g["pose_matched"] is True and job["seed"] == 4 and job["steps"] == 9
    # The teacher renders its data at each judged camera: direction prompts would add nothing.
    assert g["view_dependent"] is False
    if method == AT_SAMPLING:
        assert (g["rule"], g["scale"]) == ("sds", POCKET.sampling_scale)
        return
    spec = kinds.method(method).guidance
    assert g["rule"] == spec["rule"]
    for key, value in spec.items():  # nested keys (ESD's estimator) merged over the defaults, not replacing them
        if isinstance(value, dict):
            assert {k: g[key][k] for k in value} == value, key
        elif key != "view_dependent":
            assert g[key] == value, key
    rule = kinds.rule(g["rule"])
    # A normal-CFG rule ramps from the pocket's shape scale to its sampling scale (job.NORMAL_CFG_RAMP).
    ramp = [round(NORMAL_CFG_RAMP[0] * 9), POCKET.shape_scale, POCKET.sampling_scale, round(NORMAL_CFG_RAMP[1] * 9)]
    assert g["scale"] == (ramp if rule.sampling_cfg else POCKET.scale)
    assert job["negative_prompt"] == rule.negative_prompt  # the rule's published negative, as a job gets it


@pytest.mark.parametrize("argv, message", [
    (["--methods", "sds,magic"], f"--methods: unknown 'magic'; methods: sds, {AT_SAMPLING}, "),
    (["--prompts", "a red teapot"], "--prompts: prompt: 'a red teapot' is not in the pocket world"),
    (["--prompts", "a red cube with a white front"], "--prompts: 'a red cube with a white front' is marked"),
    (["--seeds", "one"], "invalid literal"),
    (["--jobs", "0"], "--jobs: must be at least 1, got 0"),
    (["--steps", "-3"], "--steps: must be 0 (the preset's) or more, got -3"),
    (["--override", "[1]"], "--override: must be a JSON object"),
])
def test_bad_options_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        bench_saturation.parse_args(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err, err
    if argv[0] == "--methods":  # every name the bench knows, the registry's included
        assert all(name in err for name in bench_saturation.known_methods() + kinds.method_names())


def test_a_short_run_reports_every_figure_per_method():
    methods = ["nfsd", "esd"]  # three predictions, and five with ESD's nested estimator key (SDS's two: bench janus)
    prompts = ["a red cube", "a green sphere"]
    done = subprocess.run([sys.executable, "-m", "blender_sds.engine", "bench", "saturation",
                           "--methods", ",".join(methods), "--prompts", ";".join(prompts), "--seeds", "0",
                           "--preset", "draft", "--steps", "12", "--jobs", "1",
                           "--override", OVERRIDE, "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(REPO), "HOME": str(REPO / ".pytest_cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert list(report["methods"]) == methods and report["assets"] == len(prompts)
    assert report["preset"] == "draft" and report["seeds"] == [0] and report["commit"]
    assert report["device"] == "cpu" and set(report["peak_memory_measures"]) == {"host"}
    assert report["guidance"]["esd"]["estimator"]["camera_scale"] == 0.5
    for method in methods:
        m, results = report["methods"][method], report["results"][method]
        assert set(FIGURES) <= set(m), set(FIGURES) - set(m)
        assert [r["prompt"] for r in results] == prompts and m["assets"] == len(prompts) and m["failed"] == 0
        assert m["predictions_per_step"] == PREDICTIONS[method], (method, m["predictions_per_step"])
        for key in ("median_colour_error", "median_chamfer", "seconds_per_asset"):
            assert math.isfinite(m[key]) and m[key] > 0, (method, key, m[key])
        for key in ("shape_r_precision", "colour_r_precision"):
            assert 0.0 <= m[key] <= 1.0, (method, key, m[key])
        # Red and green truths are saturated: both ratios are defined, and are the pooled per-asset figures.
        pooled = metrics.colour_fidelity(results)
        for key in ("saturation_ratio", "brightness_ratio"):
            assert math.isfinite(m[key]) and m[key] > 0 and m[key] == pytest.approx(pooled[key]), (method, key)
        assert m["peak_memory_measure"] == "host" and m["peak_memory_mb"] >= 0  # a peak is never below the start
        assert all(r["peak_host_rss_mb"] >= r["peak_host_rss_delta_mb"] for r in results)
    lines = done.stderr.splitlines()  # each asset reported as it finished, under its method
    assert sum(line.startswith(tuple(methods)) and "seed 0" in line for line in lines) == len(methods) * len(prompts)
