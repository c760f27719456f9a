"""The engine end to end on a tiny Stable-Diffusion-shaped model: CLI, result files,
determinism, checkpoints and cancellation. The model is built from configs and loaded
by the same code users run; every run goes through the whole loop to a mesh."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blender_sds.job import JobError, validate_job
from blender_sds.engine.settings import Settings
from blender_sds.engine.train.run import JobCancelled, preview_resolution, run_job
from blender_sds.engine.bench.tiny_models import make_tiny_sd_single_file
from tiny_sd_jobs import SMALL, engine, sd_job


def check_result(out: Path, center=(0.0, 0.0, 1.0), size=2.0) -> dict:
    mesh = dict(np.load(out / "mesh.npz"))
    assert mesh["vertices"].dtype == np.float32 and mesh["vertices"].shape[1] == 3
    assert mesh["faces"].dtype == np.int32 and mesh["faces"].shape[1] == 3 and len(mesh["faces"]) > 0
    assert mesh["colors"].dtype == np.float32 and mesh["colors"].shape == (len(mesh["vertices"]), 4)
    assert 0 <= mesh["faces"].min() and mesh["faces"].max() < len(mesh["vertices"])
    assert np.all(np.abs(mesh["vertices"] - np.array(center)) <= size / 2 + 1e-5), "mesh leaves the bounds"
    assert np.all((mesh["colors"] >= 0) & (mesh["colors"] <= 1))
    for name in ("preview.png", "checkpoint.pt", "log.jsonl", "job.json"):
        assert (out / name).is_file(), name
    side = preview_resolution(Settings.from_job(json.loads((out / "job.json").read_text())))
    assert Image.open(out / "preview.png").size == (2 * side, side)  # front and back, side by side
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "done" and events[-1]["faces"] == len(mesh["faces"])
    return mesh


@pytest.mark.parametrize("kind, preset, size", [
    ("pocket", "standard", 64), ("pocket", "high", 128), ("stable-diffusion", "draft", 128),
    ("stable-diffusion", "high", 128)])
def test_the_preview_is_twice_the_judged_size_within_64_to_128(kind, preset, size):
    model = {"model": "org/model"} if kind == "stable-diffusion" else {}  # a hub id: validated, never fetched
    job = validate_job({"version": 1, "prompt": "a red cube", "preset": preset, "guidance": {"kind": kind, **model}})
    assert preview_resolution(Settings.from_job(job)) == size
    job["render"]["resolution"] = 16
    assert preview_resolution(Settings.from_job(job)) == 64


@pytest.mark.parametrize("source", ["folder", "single-file"])
def test_cli_runs_a_tiny_stable_diffusion_job_to_a_mesh(sd_folder, tmp_path, source):
    model = sd_folder
    extra = {}
    if source == "single-file":
        model = make_tiny_sd_single_file(tmp_path / "tiny.safetensors", sd_folder)
        extra = {"guidance": {"kind": "stable-diffusion", "model": str(model), "config": str(sd_folder)}}
    job = tmp_path / "job.json"
    job.write_text(json.dumps(sd_job(model, **extra)))
    proc = engine("run", str(job), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    check_result(tmp_path / "out")
    # Piped: one JSON event per line on stdout, with progress carrying step and time left.
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [2, 4, 6]
    assert all(e["seconds_left"] >= 0 and np.isfinite(e["loss"]) for e in progress)
    assert {e["type"] for e in events} >= {"stage", "start", "preview", "checkpoint", "done"}


@pytest.mark.parametrize("mutate, key", [
    (lambda j: j.update(steps=0), "steps:"),
    (lambda j: j["bounds"].update(size=-1), "bounds.size:"),
    (lambda j: j.update(prompt="  "), "prompt:"),
    (lambda j: j["guidance"].update(model="/nonexistent/model.safetensors"), "guidance.model:"),
    (lambda j: j.update(colour="red"), "colour"),
], ids=["steps", "size", "prompt", "model-file", "unknown-key"])
def test_cli_bad_job_exits_2_with_one_line_naming_the_key(sd_folder, tmp_path, mutate, key):
    raw = sd_job(sd_folder)
    mutate(raw)
    job = tmp_path / "job.json"
    job.write_text(json.dumps(raw))
    proc = engine("run", str(job), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "mesh.npz").exists()


def test_cli_names_a_missing_job_file_and_a_folder_that_is_not_a_model(tmp_path):
    proc = engine("run", str(tmp_path / "nope.json"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "nope.json" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    job = tmp_path / "job.json"
    job.write_text(json.dumps(sd_job(not_a_model)))
    proc = engine("run", str(job), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: guidance.model:") and len(proc.stderr.strip().splitlines()) == 1


def test_same_job_same_seed_gives_the_identical_mesh(sd_folder, tmp_path):
    job = validate_job(sd_job(sd_folder, output={"preview_every": 0, "checkpoint_every": 0}))
    a = dict(np.load(run_job(job, tmp_path / "a", device="cpu") / "mesh.npz"))
    b = dict(np.load(run_job(job, tmp_path / "b", device="cpu") / "mesh.npz"))
    for name in ("vertices", "faces", "colors"):
        assert np.array_equal(a[name], b[name]), name
    other = validate_job(sd_job(sd_folder, seed=8, output={"preview_every": 0, "checkpoint_every": 0}))
    c = dict(np.load(run_job(other, tmp_path / "c", device="cpu") / "mesh.npz"))
    assert a["vertices"].shape != c["vertices"].shape or not np.array_equal(a["vertices"], c["vertices"])


def test_continue_from_a_checkpoint_refines_and_resumes(sd_folder, tmp_path):
    first = run_job(validate_job(sd_job(sd_folder)), tmp_path / "first", device="cpu")
    state = torch.load(first / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6
    # Refine: a new run starting from the field (step count starts again).
    events = []
    refine = validate_job(sd_job(sd_folder, steps=4, init={"checkpoint": str(first / "checkpoint.pt")}))
    run_job(refine, tmp_path / "refine", device="cpu", on_event=events.append)
    assert next(e for e in events if e["type"] == "start")["start_step"] == 0
    check_result(tmp_path / "refine")
    # Resume: continue where the killed run's checkpoint left it.
    events = []
    resume = validate_job(sd_job(sd_folder, steps=10, init={"checkpoint": str(first / "checkpoint.pt"),
                                                                "resume": True}))
    run_job(resume, tmp_path / "resume", device="cpu", on_event=events.append)
    assert next(e for e in events if e["type"] == "start")["start_step"] == 6
    assert [e["step"] for e in events if e["type"] == "progress"] == [8, 10]


def test_a_checkpoint_from_another_preset_or_a_foreign_file_is_refused(sd_folder, tmp_path):
    first = run_job(validate_job(sd_job(sd_folder, steps=2)), tmp_path / "first", device="cpu")
    other = validate_job(sd_job(sd_folder, preset="standard", steps=2, render={"resolution": 32, "samples": 24},
                                init={"checkpoint": str(first / "checkpoint.pt")}))
    with pytest.raises(ValueError, match="init.checkpoint: .*preset"):
        run_job(other, tmp_path / "other", device="cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="init.checkpoint: .*not a blender-sds checkpoint"):
        run_job(validate_job(sd_job(sd_folder, init={"checkpoint": str(foreign)})), tmp_path / "f", device="cpu")


def test_cancel_keeps_a_checkpoint_and_writes_no_mesh(sd_folder, tmp_path):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(JobCancelled, match="step 3 of 6"):
        run_job(validate_job(sd_job(sd_folder)), tmp_path / "out", device="cpu", should_stop=should_stop)
    assert not (tmp_path / "out" / "mesh.npz").exists()
    assert torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_a_stale_result_is_removed_before_a_new_run(sd_folder, tmp_path):
    out = run_job(validate_job(sd_job(sd_folder, steps=2)), tmp_path / "out", device="cpu")
    assert (out / "mesh.npz").exists()
    with pytest.raises(JobCancelled):
        run_job(validate_job(sd_job(sd_folder, steps=2)), out, device="cpu", should_stop=lambda: True)
    assert not (out / "mesh.npz").exists()


def _shadings_drawn(run, draws: int = 600) -> dict:
    counts: dict = {}
    for _ in range(draws):
        name = run.shading_for(run.job["optim"]["albedo_steps"])
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_the_engine_renders_only_shadings_its_judge_knows(sd_folder, tmp_path):
    from blender_sds.engine.train.run import Run
    text = Run(validate_job(sd_job(sd_folder)), tmp_path / "sd", torch.device("cpu"))
    assert text.shading_for(0) == "albedo"  # albedo first, whatever the judge
    counts = _shadings_drawn(text)
    assert set(counts) == {"albedo", "textureless", "lambertian"}, counts
    assert 100 < counts["albedo"] < 200, counts  # threestudio's 0.25 / 0.375 / 0.375
    # The pocket world's images are flat albedo or lit: a grey render would be judged against nothing like it.
    pocket = Run(validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket"}, **SMALL,
                               "render": {"resolution": 16, "samples": 16}}), tmp_path / "pocket",
                 torch.device("cpu"))
    counts = _shadings_drawn(pocket)
    assert set(counts) == {"albedo", "lambertian"}, counts
    assert 180 < counts["albedo"] < 300, counts  # 0.25 / (0.25 + 0.375) of the draws


SHAPE_PHASE_JOB = {"version": 1, "prompt": "a red cube", "steps": 4, "guidance": {"kind": "pocket", "rule": "vsd"},
                   "render": {"resolution": 16, "samples": 16, "batch": 1}, "optim": {"albedo_steps": 0}}


def shape_phase_run(tmp_path, shape_colour: str):
    from blender_sds.engine.train.run import Run
    job = validate_job({**SHAPE_PHASE_JOB, "optim": {"albedo_steps": 0, "shape_steps": 2,
                                                     "shape_colour": shape_colour}})
    run = Run(job, tmp_path / shape_colour, torch.device("cpu"))

    def heads():
        return ([p.detach().clone() for p in run.field.albedo_head.parameters()],
                [p.detach().clone() for p in run.field.density_head.parameters()])
    return run, heads


def test_the_shape_phase_trains_the_shape_alone(tmp_path):
    """optim.shape_colour "frozen": while optim.shape_steps lasts the colour head gets no gradient
    (the render still shows the colour); the density learns. From its end the colour learns too."""
    default = validate_job(SHAPE_PHASE_JOB)
    assert default["optim"]["shape_steps"] == 3 == default["guidance"]["scale"][0]  # the default ramp's start: 70%
    run, heads = shape_phase_run(tmp_path, "frozen")
    for step in range(4):
        colour, density = heads()
        run.train_step(4)
        colour_after, density_after = heads()
        moved = any(not torch.equal(a, b) for a, b in zip(colour, colour_after))
        assert moved == (step >= 2), step
        assert any(not torch.equal(a, b) for a, b in zip(density, density_after)), step


def test_a_restarted_colour_learns_with_the_shape_and_turns_grey_at_shape_steps(tmp_path):
    """optim.shape_colour "restart": the colour learns from step 0; at shape_steps, before that step's
    update, the albedo is an even grey and its head's Adam moments are gone (a fresh start, not the
    shape phase's momentum); the density head is untouched by the restart."""
    run, heads = shape_phase_run(tmp_path, "restart")
    last = run.field.albedo_head[-1]
    for step in range(2):
        colour, _ = heads()
        run.train_step(4)
        assert any(not torch.equal(a, b) for a, b in zip(colour, heads()[0])), step
    assert run.optimizer.state[last.weight]["exp_avg"].abs().sum() > 0
    _, density = heads()
    run.shape_phase_colour(run.step)  # what train_step does first at step 2
    assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0
    assert last.weight not in run.optimizer.state and last.bias not in run.optimizer.state
    assert all(torch.equal(a, b) for a, b in zip(density, heads()[1]))
    points = torch.rand(64, 3) * 2 - 1 + torch.tensor([0.0, 0.0, 1.0])
    assert torch.equal(run.field(points)[1], torch.full((64, 3), 0.5))
    run.train_step(4)
    run.train_step(4)
    assert torch.count_nonzero(last.weight) > 0  # and it learns again, once, from grey
    assert not torch.equal(run.field(points)[1], torch.full((64, 3), 0.5))


def test_shape_colour_defaults_restart_for_a_fresh_vsd_run_only(tmp_path):
    """Measured for VSD (docs/QUALITY.md "Saturation"); every other rule, and a start that brings its
    own colours, keeps the colour frozen through the shape phase."""
    def colour(**changes):
        return validate_job({**SHAPE_PHASE_JOB, **changes})["optim"]["shape_colour"]
    assert colour() == "restart"
    (tmp_path / "checkpoint.pt").write_bytes(b"")  # the job checks the file exists; the run reads it
    assert colour(init={"checkpoint": str(tmp_path / "checkpoint.pt")}) == "frozen"  # a refine keeps its colours
    assert colour(guidance={"kind": "pocket", "rule": "csd"}) == "frozen"
    assert colour(guidance={"kind": "pocket", "rule": "vsd", "scale": 7.5}) == "frozen"  # no shape phase
    assert colour(optim={"shape_colour": "frozen"}) == "frozen"
    with pytest.raises(JobError, match="optim.shape_colour.*unknown mode 'grey'; modes: frozen, restart"):
        colour(optim={"shape_colour": "grey"})
