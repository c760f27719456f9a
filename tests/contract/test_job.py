"""The job contract (docs/JOB.md): what validates, what it normalises to, and what is refused."""
from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path

import pytest

from blender_sds import kinds
from blender_sds.job import (PRESETS, SCHEMA_VERSION, JobError, dumps, load_job, preset_table, validate_camera,
                             rescaled, validate_job, with_steps)
from blender_sds.kinds.pocket import PRESETS as POCKET_PRESETS

KINDS = kinds.kind_names()
DEFAULT_SCALE = {name: kinds.kind(name).scale for name in KINDS}

DOC = Path(__file__).resolve().parents[2] / "docs" / "JOB.md"

RIG_C2W = [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 1], [0, 0, 0, 1]]


def design_example() -> dict:
    """docs/ARCHITECTURE.md's "The example job", verbatim."""
    return {
        "version": 1,
        "prompt": "a ceramic teapot",
        "negative_prompt": "",
        "seed": 0,
        "preset": "standard",
        "bounds": {"center": [0.0, 0.0, 1.0], "size": 2.0},
        "guidance": {"kind": "stable-diffusion", "model": "stabilityai/stable-diffusion-2-1-base", "scale": 100},
        "cameras": {"mode": "mixed", "rig": [
            {"c2w": copy.deepcopy(RIG_C2W),
             "width": 512, "height": 512, "fx": 711.1, "fy": 711.1, "cx": 256.0, "cy": 256.0}]},
        "init": {"checkpoint": "previous-run/checkpoint.pt"},
        "mesh": {"resolution": 256, "threshold": "auto"},
    }


@pytest.fixture
def base(tmp_path) -> Path:
    """A job folder holding what the example and reference jobs name."""
    (tmp_path / "previous-run").mkdir()
    (tmp_path / "previous-run" / "checkpoint.pt").write_bytes(b"not read by validation")
    (tmp_path / "views").mkdir()
    (tmp_path / "views" / "000.png").write_bytes(b"\x89PNG")
    (tmp_path / "models" / "tiny-sd").mkdir(parents=True)
    (tmp_path / "models" / "sd.safetensors").write_bytes(b"")
    (tmp_path / "blockout.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")  # not read by validation
    (tmp_path / "blockout.txt").write_text("")
    return tmp_path


def reference_job() -> dict:
    camera = {"c2w": copy.deepcopy(RIG_C2W), "width": 64, "height": 64, "fx": 80, "fy": 80, "cx": 32, "cy": 32,
              "name": "view 0"}
    return {"version": 1, "guidance": {"kind": "reference", "views": [{"image": "views/000.png", "camera": camera}]},
            "cameras": {"mode": "rig"}}


# -- malformed jobs ---------------------------------------------------------------------------

def put(*path_and_value):
    """A mutation that sets job[path...] = value (path items are keys or list indices)."""
    *path, value = path_and_value

    def mutate(job):
        node = job
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        return job
    return mutate


def drop(*path):
    def mutate(job):
        node = job
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
        return job
    return mutate


def as_reference(*more):
    def mutate(job):
        job = reference_job()
        for m in more:
            job = m(job)
        return job
    return mutate


RIG0 = ("cameras", "rig", 0)
NAN, INF = float("nan"), float("inf")

MALFORMED = [
    ("top-level-list", lambda j: [j], "job", "must be a JSON object"),
    ("version-missing", drop("version"), "version", "missing; this engine reads version 1"),
    ("version-2", put("version", 2), "version", "unsupported job version 2; this engine reads version 1"),
    ("version-bool", put("version", True), "version", "got true"),
    ("unknown-top-key", put("promt", "x"), "promt", "unknown key; allowed keys: version, prompt"),
    ("unknown-guidance-key", put("guidance", "sclae", 3), "guidance.sclae", "unknown key"),
    ("unknown-camera-key", put(*RIG0, "focal", 50), "cameras.rig[0].focal", "allowed keys: c2w, width"),
    ("unknown-render-key", put("render", {"res": 64}), "render.res", "allowed keys: resolution, batch, samples"),
    ("section-not-object", put("bounds", [0, 0, 0]), "bounds", "must be an object, got [0, 0, 0]"),
    ("seed-bool", put("seed", True), "seed", "must be an int 0 .. 4294967295, got true"),
    ("seed-negative", put("seed", -1), "seed", "got -1"),
    ("seed-too-big", put("seed", 2**32), "seed", "got 4294967296"),
    ("steps-zero", put("steps", 0), "steps", "0 (fit init.mesh and stop) needs init.mesh"),
    ("steps-too-many", put("steps", 100001), "steps", "got 100001"),
    ("steps-string", put("steps", "100"), "steps", "got '100'"),
    ("steps-float", put("steps", 100.0), "steps", "must be an int"),
    ("prompt-blank", put("prompt", "   "), "prompt", "must not be empty for guidance kind 'stable-diffusion'"),
    ("prompt-not-string", put("prompt", 5), "prompt", "must be a string, got 5"),
    ("guidance-missing", drop("guidance"), "guidance", "missing"),
    ("kind-missing", drop("guidance", "kind"), "guidance.kind", "missing; kinds: stable-diffusion"),
    ("kind-unknown", put("guidance", "kind", "dalle"), "guidance.kind",
     "unknown kind 'dalle'; kinds: stable-diffusion, pixel, reference, pocket"),
    ("model-missing", drop("guidance", "model"), "guidance.model", "required for guidance kind 'stable-diffusion'"),
    ("model-not-hub-id", put("guidance", "model", "not a model"), "guidance.model", "neither a hub id (org/name)"),
    ("model-file-missing", put("guidance", "model", "models/gone.safetensors"), "guidance.model", "no such file"),
    ("pixel-single-file", lambda j: put("guidance", {"kind": "pixel", "model": "models/sd.safetensors"})(j),
     "guidance.model", "not a single-file checkpoint"),
    ("config-without-single-file", put("guidance", "config", "org/config"), "guidance.config",
     "only used with a single-file checkpoint"),
    ("scale-negative", put("guidance", "scale", -1), "guidance.scale", "must be a number > 0 and <= 1000, got -1"),
    ("scale-absurd", put("guidance", "scale", 1e300), "guidance.scale", "<= 1000, got 1e+300"),
    ("lr-absurd", put("optim", {"lr": 1e300}), "optim.lr", "must be a number > 0 and <= 1, got 1e+300"),
    ("scale-nan", put("guidance", "scale", NAN), "guidance.scale", "finite"),
    ("scale-bool", put("guidance", "scale", True), "guidance.scale", "got true"),
    ("t-range-zero", put("guidance", "t_range", [0, 0.5]), "guidance.t_range", "0 < lo < hi < 1"),
    ("t-range-reversed", put("guidance", "t_range", [0.9, 0.2]), "guidance.t_range", "got [0.9, 0.2]"),
    ("t-range-nan", put("guidance", "t_range", [NAN, 0.5]), "guidance.t_range", "no NaN"),
    ("t-schedule-unknown", put("guidance", "t_schedule", "linear"), "guidance.t_schedule", "unknown t_schedule"),
    ("weighting-unknown", put("guidance", "weighting", "sdss"), "guidance.weighting",
     "unknown weighting 'sdss'; weightings: sds, uniform, fantasia3d"),
    ("dtype-unknown", put("guidance", "dtype", "bf16"), "guidance.dtype", "unknown dtype 'bf16'"),
    ("grad-clip-short", put("guidance", "grad_clip", [0, 1.0, 2.0]), "guidance.grad_clip", "[start_step"),
    ("grad-clip-steps-backwards", put("guidance", "grad_clip", [100, 1, 2, 50]), "guidance.grad_clip",
     "start_step < end_step"),
    ("grad-clip-negative", put("guidance", "grad_clip", -1), "guidance.grad_clip", "> 0, got -1"),
    ("views-for-text-kind", put("guidance", "views", [{"image": "views/000.png"}]), "guidance.views",
     "only for guidance kind 'reference'"),
    ("reference-no-views", as_reference(drop("guidance", "views")), "guidance.views", "required"),
    ("reference-empty-views", as_reference(put("guidance", "views", [])), "guidance.views", "non-empty list"),
    ("reference-with-model", as_reference(put("guidance", "model", "org/name")), "guidance.model", "not used"),
    ("view-image-missing", as_reference(put("guidance", "views", 0, "image", "views/404.png")),
     "guidance.views[0].image", "no such file"),
    ("view-camera-missing", as_reference(drop("guidance", "views", 0, "camera")), "guidance.views[0].camera",
     "missing"),
    ("view-camera-bad-c2w", as_reference(put("guidance", "views", 0, "camera", "c2w", 0, 0, NAN)),
     "guidance.views[0].camera.c2w", "row 0, column 0 is nan"),
    ("preset-unknown", put("preset", "ultra"), "preset", "unknown preset 'ultra'; presets: draft, standard, high"),
    ("mode-unknown", put("cameras", "mode", "random"), "cameras.mode", "unknown mode 'random'"),
    ("rig-empty", put("cameras", "rig", []), "cameras.rig", "at least one camera when cameras.mode is 'mixed'"),
    ("c2w-3x4", put(*RIG0, "c2w", RIG_C2W[:3]), "cameras.rig[0].c2w", "4x4"),
    ("c2w-nan", put(*RIG0, "c2w", 1, 3, NAN), "cameras.rig[0].c2w", "must be finite; row 1, column 3 is nan"),
    ("c2w-inf", put(*RIG0, "c2w", 2, 1, INF), "cameras.rig[0].c2w", "row 2, column 1 is inf"),
    ("c2w-string", put(*RIG0, "c2w", 0, 0, "1"), "cameras.rig[0].c2w", "row 0, column 0 is '1'"),
    ("c2w-last-row", put(*RIG0, "c2w", 3, [0, 0, 1, 1]), "cameras.rig[0].c2w", "last row must be [0, 0, 0, 1]"),
    ("c2w-scaled", put(*RIG0, "c2w", [[2, 0, 0, 0], [0, 0, -2, -4], [0, 2, 0, 1], [0, 0, 0, 1]]),
     "cameras.rig[0].c2w", "scaled (column lengths 2, 2, 2)"),
    ("c2w-sheared", put(*RIG0, "c2w", [[1, 0.6, 0, 0], [0, 0.8, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
     "cameras.rig[0].c2w", "sheared"),
    ("c2w-reflected", put(*RIG0, "c2w", [[-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
     "cameras.rig[0].c2w", "reflection (determinant -1"),
    ("width-zero", put(*RIG0, "width", 0), "cameras.rig[0].width", "1 .. 8192, got 0"),
    ("height-too-big", put(*RIG0, "height", 9000), "cameras.rig[0].height", "got 9000"),
    ("width-float", put(*RIG0, "width", 512.0), "cameras.rig[0].width", "must be an int"),
    ("fx-zero", put(*RIG0, "fx", 0), "cameras.rig[0].fx", "> 0, got 0"),
    ("fy-negative", put(*RIG0, "fy", -5.5), "cameras.rig[0].fy", "got -5.5"),
    ("cx-missing", drop(*RIG0, "cx"), "cameras.rig[0].cx", "missing"),
    ("camera-ortho", put(*RIG0, "type", "ORTHO"), "cameras.rig[0].type",
     "orthographic cameras are not supported yet"),
    ("camera-pano", put(*RIG0, "type", "PANO"), "cameras.rig[0].type", "panoramic cameras are not supported yet"),
    ("bounds-size-zero", put("bounds", "size", 0), "bounds.size", "> 0, got 0"),
    ("bounds-size-huge", put("bounds", "size", 1e300), "bounds.size", "between 0.001 and 10000 (Blender units), got 1e+300"),
    ("bounds-size-tiny", put("bounds", "size", 1e-300), "bounds.size", "got 1e-300"),
    ("bounds-center-far", put("bounds", "center", [0, 0, 1e9]), "bounds.center", "within +-1e+06"),
    ("cy-absurd", put(*RIG0, "cy", 1e30), "cameras.rig[0].cy", "within 10 frames of the frame's centre (256 px)"),
    ("fx-absurd", put(*RIG0, "fx", 1e-9), "cameras.rig[0].fx", "between 0.001 and 100000 times the frame"),
    ("camera-far", put(*RIG0, "c2w", 1, 3, -1e7), "cameras.rig[0].c2w", "over 1e+06 units from the origin"),
    ("camera-looks-away", lambda j: put(*RIG0, "name", "Camera.003")(put(*RIG0, "c2w", [[-1, 0, 0, 0], [0, 0, 1, -4],
                                                                                      [0, 1, 0, 1], [0, 0, 0, 1]])(j)),
     "cameras.rig[0]", 'camera (\'Camera.003\') does not see the bounds'),
    ("view-camera-looks-away", as_reference(put("guidance", "views", 0, "camera", "c2w", 1, 3, 40)),
     "guidance.views[0].camera", "does not see the bounds"),
    ("render-too-many-points", put("render", {"resolution": 1024, "batch": 64, "samples": 2048}), "render",
     "points a step, over 2.15e+09"),
    ("unknown-key-long", put("k" * 5000, 1), "k" * 57 + "...", "unknown key"),
    ("preset-long", put("preset", "p" * 200000), "preset", "unknown preset 'ppppp"),
    ("bounds-center-short", put("bounds", "center", [0, 0]), "bounds.center", "3 finite numbers, got [0, 0]"),
    ("bounds-center-inf", put("bounds", "center", [0, INF, 0]), "bounds.center", "no NaN or infinity"),
    ("elevation-reversed", put("cameras", "elevation", [45, -10]), "cameras.elevation", "lo <= hi"),
    ("elevation-out-of-range", put("cameras", "elevation", [-100, 10]), "cameras.elevation", "within -90 .. 90"),
    ("distance-zero", put("cameras", "distance", [0, 1]), "cameras.distance", "0 < lo <= hi"),
    ("rig-fraction-big", put("cameras", "rig_fraction", 1.5), "cameras.rig_fraction", "<= 1, got 1.5"),
    ("jitter-negative", put("cameras", "jitter", {"rotation": -1}), "cameras.jitter.rotation", ">= 0"),
    ("render-resolution-small", put("render", {"resolution": 4}), "render.resolution", "8 .. 1024, got 4"),
    ("albedo-steps-too-many", put("optim", {"albedo_steps": 6000}), "optim.albedo_steps",
     "at most steps (5000), got 6000"),
    ("shape-steps-too-many", put("optim", {"shape_steps": 5001}), "optim.shape_steps",
     "at most steps (5000), got 5001"),
    ("shape-steps-negative", put("optim", {"shape_steps": -1}), "optim.shape_steps", "got -1"),
    ("checkpoint-missing", put("init", "checkpoint", "nowhere/checkpoint.pt"), "init.checkpoint", "no such file"),
    ("checkpoint-is-folder", put("init", "checkpoint", "previous-run"), "init.checkpoint", "is a folder"),
    ("resume-without-checkpoint", put("init", {"resume": True}), "init.resume", "needs init.checkpoint"),
    ("threshold-word", put("mesh", "threshold", "high"), "mesh.threshold", "\"auto\" or a number > 0, got 'high'"),
    ("mesh-resolution-small", put("mesh", "resolution", 8), "mesh.resolution", "16 .. 1024"),
    ("progress-every-zero", put("output", {"progress_every": 0}), "output.progress_every", ">= 1, got 0"),
    ("mesh-and-checkpoint", put("init", "mesh", "blockout.obj"), "init.mesh", "two starting points; give one"),
    ("mesh-suffix", put("init", {"mesh": "blockout.txt"}), "init.mesh", "must be a .npz, .obj"),
    ("mesh-missing", put("init", {"mesh": "nowhere.obj"}), "init.mesh", "no such file"),
    ("keep-shape-without-mesh", put("optim", {"keep_shape": 2}), "optim.keep_shape",
     "keeps the shape of init.mesh, which is null; got 2"),
    ("keep-shape-schedule", lambda j: put("optim", {"keep_shape_schedule": "cosine"})(
        put("init", {"mesh": "blockout.obj"})(j)), "optim.keep_shape_schedule", "unknown schedule 'cosine'; schedules: constant, linear"),
    ("keep-shape-negative", lambda j: put("optim", {"keep_shape": -1})(put("init", {"mesh": "blockout.obj"})(j)),
     "optim.keep_shape", ">= 0"),
    ("target-faces-tiny", put("mesh", "target_faces", 50), "mesh.target_faces", "0 (keep every face) or at least 100"),
    ("smooth-negative", put("mesh", "smooth", -1), "mesh.smooth", "0 .. 1000, got -1"),
]


@pytest.mark.parametrize("mutate, key, fragment", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_job_names_key_and_problem(base, mutate, key, fragment):
    job = mutate(design_example())
    with pytest.raises(JobError) as info:
        validate_job(job, base_dir=base)
    err = info.value
    assert err.key == key
    assert str(err).startswith(f"{key}: ")
    assert str(err) == f"{err.key}: {err.problem}"
    assert fragment in err.problem
    assert len(str(err)) <= 300 and "\n" not in str(err)
    assert isinstance(err, ValueError)


def test_malformed_table_is_big_and_ids_unique():
    ids = [m[0] for m in MALFORMED]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)


# -- the example and its defaults -------------------------------------------------------------

def test_design_example_normalises_with_defaults(base):
    raw = design_example()
    before = copy.deepcopy(raw)
    job = validate_job(raw, base_dir=base)
    assert raw == before, "validation must not change its input"

    assert job["version"] == SCHEMA_VERSION == 1
    assert (job["prompt"], job["negative_prompt"], job["seed"], job["preset"]) == ("a ceramic teapot", "", 0,
                                                                                    "standard")
    assert job["steps"] == PRESETS["standard"]["steps"] == 5000
    assert job["render"] == {"resolution": 64, "batch": 1, "samples": 128}
    assert job["bounds"] == {"center": [0.0, 0.0, 1.0], "size": 2.0}

    g = job["guidance"]
    assert g["kind"] == "stable-diffusion"
    assert g["model"] == "stabilityai/stable-diffusion-2-1-base" and g["config"] is None
    assert g["scale"] == 100.0 and isinstance(g["scale"], float)
    assert g["t_range"] == [0.02, 0.98]
    assert (g["t_schedule"], g["weighting"], g["grad_clip"], g["dtype"]) == ("random", "sds", None, "auto")
    assert g["view_dependent"] is True and g["low_vram"] is False and g["views"] == []

    c = job["cameras"]
    assert c["mode"] == "mixed" and c["rig_fraction"] == 0.5
    assert c["elevation"] == [-10.0, 45.0] and c["azimuth"] == [-180.0, 180.0]
    assert c["distance"] == [1.5, 2.0] and c["fovy"] == [40.0, 70.0]
    assert c["jitter"] == {"position": 0.02, "rotation": 1.0, "target": 0.05}
    (cam,) = c["rig"]
    assert cam["c2w"] == [[float(x) for x in row] for row in RIG_C2W]
    assert all(isinstance(x, float) for row in cam["c2w"] for x in row)
    assert (cam["width"], cam["height"], cam["fx"], cam["cy"]) == (512, 512, 711.1, 256.0)
    assert cam["type"] == "PERSP" and cam["name"] is None

    assert job["optim"] == {"lr": 0.01, "orientation": 10.0, "sparsity": 1.0, "opaque": 0.0, "albedo_steps": 1000,
                            "shape_steps": 0, "shape_colour": "frozen", "keep_shape": 0.0, "keep_shape_schedule": "constant"}
    assert job["init"] == {"checkpoint": str(base / "previous-run" / "checkpoint.pt"), "resume": False, "mesh": None}
    assert job["mesh"] == {"resolution": 256, "threshold": "auto", "min_component": 0.05, "target_faces": 30000,
                           "smooth": 40}
    assert job["output"] == {"preview_every": 250, "checkpoint_every": 1000, "progress_every": 10}


def test_normalised_job_is_stable_and_canonical(base, tmp_path_factory):
    job = validate_job(design_example(), base_dir=base)
    text = dumps(job)
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2)
    assert list(json.loads(text)) == sorted(job)
    # Paths are absolute now, so the job means the same from anywhere.
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert validate_job(json.loads(text), base_dir=elsewhere) == job


def _doc_keys() -> dict[str, set[str]]:
    """The key names each section of docs/JOB.md lists in its table."""
    sections, current = {}, None
    for line in DOC.read_text().splitlines():
        head = re.match(r"^## (?:`(\w+)`|(Top level|Camera record))", line)
        if head:
            current = head.group(1) or {"Top level": "top", "Camera record": "camera"}[head.group(2)]
            sections[current] = set()
        elif line.startswith("## "):
            current = None  # a section that lists no keys (e.g. "Guidance methods")
        elif current and line.startswith("| `"):
            first_cell = line.split("|")[1]
            sections[current].update(re.findall(r"`(\w+)`", first_cell))
        elif current == "bounds" and line.startswith("- `"):
            sections[current].add(re.match(r"- `(\w+)`", line).group(1))
    return sections


def test_normalised_keys_match_the_doc(base):
    doc = _doc_keys()
    job = validate_job(design_example(), base_dir=base)
    assert set(job) == doc["top"]
    for section in ("bounds", "guidance", "cameras", "render", "optim", "init", "mesh", "output"):
        assert set(job[section]) == doc[section], section
    assert set(job["cameras"]["rig"][0]) == doc["camera"]


# -- load_job and paths -----------------------------------------------------------------------

def test_load_job_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(JobError) as info:
        load_job(path)
    assert info.value.key == str(path)
    assert "no such job file" in str(info.value)


def test_load_job_bad_json_gives_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "version": 1,\n  "prompt": "x",,\n}\n')
    with pytest.raises(JobError) as info:
        load_job(path)
    assert info.value.key == str(path)
    assert "not valid JSON" in info.value.problem and "line 3, column 17" in info.value.problem


def _unreadable_jobs(folder: Path) -> dict[str, tuple[Path, str]]:
    """What a careless or hostile user may hand over as a job file, and the words of its refusal."""
    os.mkfifo(folder / "fifo.json")  # opened, it would wait for a writer forever
    (folder / "zero.json").symlink_to("/dev/zero")  # read whole, it would fill memory
    (folder / "deep.json").write_text("[" * 5000 + "]" * 5000)
    (folder / "digits.json").write_text('{"version": ' + "9" * 5000 + "}")
    (folder / "nan.json").write_text('{"version": 1, "seed": NaN}')
    with open(folder / "huge.json", "wb") as f:
        f.truncate(17 * 2**20)  # sparse: 17 MiB of NUL on no disk
    return {"fifo": (folder / "fifo.json", "not a regular file"),
            "dev-zero": (folder / "zero.json", "not a regular file"),
            "deep": (folder / "deep.json", "nested more than 64 levels deep"),
            "digits": (folder / "digits.json", "a number of 5000 characters"),
            "nan": (folder / "nan.json", "NaN is not JSON"),
            "huge": (folder / "huge.json", "is over 16 MiB")}


def test_load_job_refuses_what_is_not_a_small_json_file_by_its_name(tmp_path):
    for name, (path, words) in _unreadable_jobs(tmp_path).items():
        with pytest.raises(JobError) as info:
            load_job(path)
        assert info.value.key == str(path), name
        assert words in info.value.problem, (name, str(info.value))
        assert len(str(info.value)) <= 300, name


def test_run_steps_rescales_what_counts_steps(base):
    """`run JOB --steps N` on a job normalised for another count (albedo_steps 1000 of 5000,
    shape_steps 2500)."""
    raw = design_example()
    raw["optim"] = {"shape_steps": 2500}
    job = validate_job(raw, base_dir=base)
    assert job["optim"]["albedo_steps"] == 1000 and job["optim"]["shape_steps"] == 2500 and job["steps"] == 5000
    for steps in (1, 2, 700, 5000, 100000):
        again = with_steps(job, steps)
        assert again["steps"] == steps and again["optim"]["albedo_steps"] == round(0.2 * steps)
        assert again["optim"]["shape_steps"] == round(0.5 * steps)
        assert {k: v for k, v in again.items() if k not in ("steps", "optim")} == \
            {k: v for k, v in job.items() if k not in ("steps", "optim")}
    with pytest.raises(JobError) as info:
        with_steps(job, 0)
    assert str(info.value) == "steps: must be an int 1 .. 100000, got 0"


def test_a_refine_of_another_length_keeps_the_shape_phase_in_its_place():
    """The add-on's Refine with its own step count: a pocket VSD run's shape phase and ramp move
    with it (40 steps of a 900-step run's [630, 20, 1.5, 675] must not stay colour-frozen
    throughout); what is not a count is left for validation to name."""
    job = validate_job({"version": 1, "prompt": "a red cube", "steps": 900,
                        "guidance": {"kind": "pocket", "rule": "vsd"}})
    assert job["guidance"]["scale"] == [630, 20.0, 1.5, 675] and job["optim"]["shape_steps"] == 630
    short = validate_job(rescaled(job, 40))
    assert short["guidance"]["scale"] == [28, 20.0, 1.5, 30] and short["optim"]["shape_steps"] == 28
    assert short["optim"]["albedo_steps"] == 8 and short["steps"] == 40
    odd = rescaled({"steps": "many", "optim": {"shape_steps": 10}}, 40)
    assert odd == {"steps": 40, "optim": {"shape_steps": 10}}
    bad = rescaled({"steps": 100, "optim": {"shape_steps": "half"}, "guidance": {"scale": [1, 2]}}, 40)
    assert bad["optim"]["shape_steps"] == "half" and bad["guidance"]["scale"] == [1, 2]


def test_a_job_may_start_from_a_mesh_and_stop_after_the_fit(base):
    raw = design_example()
    raw["init"] = {"mesh": "blockout.obj"}
    job = validate_job(raw, base_dir=base)
    assert job["init"] == {"checkpoint": None, "resume": False, "mesh": str(base / "blockout.obj")}
    assert (job["optim"]["keep_shape"], job["optim"]["keep_shape_schedule"]) == (10.0, "constant")
    fit_only = with_steps(job, 0)
    assert fit_only["steps"] == 0 and fit_only["optim"]["albedo_steps"] == 0
    # Resuming a run that started from a mesh: the mesh stays, as the shape to keep.
    raw["init"] = {"mesh": "blockout.obj", "checkpoint": "previous-run/checkpoint.pt", "resume": True}
    assert validate_job(raw, base_dir=base)["init"]["resume"] is True


def test_load_job_resolves_paths_against_its_folder(base, tmp_path_factory, monkeypatch):
    job = design_example()
    job["guidance"] = {"kind": "stable-diffusion", "model": "models/sd.safetensors", "config": "models/tiny-sd"}
    path = base / "job.json"
    path.write_text(json.dumps(job))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    loaded = load_job(str(path))
    assert loaded["init"]["checkpoint"] == str(base / "previous-run" / "checkpoint.pt")
    assert loaded["guidance"]["model"] == str(base / "models" / "sd.safetensors")
    assert loaded["guidance"]["config"] == str(base / "models" / "tiny-sd")
    # A relative path is read against the job's folder, not the working directory.
    with pytest.raises(JobError) as info:
        validate_job(job)
    assert info.value.key == "guidance.model"


def test_local_diffusers_folder_wins_over_hub_id(base):
    job = design_example()
    job["guidance"]["model"] = "models/tiny-sd"
    assert validate_job(job, base_dir=base)["guidance"]["model"] == str(base / "models" / "tiny-sd")
    job["guidance"]["model"] = "someorg/tiny-sd"
    assert validate_job(job, base_dir=base)["guidance"]["model"] == "someorg/tiny-sd"


# -- kinds, presets, numbers ------------------------------------------------------------------

def test_reference_job_with_views(base):
    job = validate_job(reference_job(), base_dir=base)
    g = job["guidance"]
    assert g["kind"] == "reference" and g["model"] is None and g["scale"] == DEFAULT_SCALE["reference"] == 1.0
    assert g["view_dependent"] is False
    (view,) = g["views"]
    assert view["image"] == str(base / "views" / "000.png")
    assert view["camera"]["name"] == "view 0" and view["camera"]["fx"] == 80.0
    assert isinstance(view["camera"]["fx"], float) and view["camera"]["width"] == 64
    assert job["cameras"]["mode"] == "rig" and job["cameras"]["rig"] == []
    assert job["prompt"] == ""
    assert (job["optim"]["orientation"], job["optim"]["sparsity"]) == (0.0, 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_scale_and_view_dependence_default_by_kind(base, kind):
    prompt = "a red cube" if kind == "pocket" else "a cat"
    job = reference_job() if kind == "reference" else {"version": 1, "prompt": prompt, "guidance": {"kind": kind}}
    if kind in ("stable-diffusion", "pixel"):
        job["guidance"]["model"] = "org/model"
    g = validate_job(job, base_dir=base)["guidance"]
    assert g["scale"] == DEFAULT_SCALE[kind]
    assert g["view_dependent"] is (kind != "reference")


def test_preset_and_overrides(base):
    job = design_example()
    job["preset"] = "draft"
    del job["mesh"]
    draft = validate_job(job, base_dir=base)
    assert draft["steps"] == 1500 and draft["optim"]["albedo_steps"] == 300
    assert draft["render"] == {"resolution": 64, "batch": 1, "samples": 96}
    assert draft["mesh"]["resolution"] == 128

    job.update(preset="high", steps=42, render={"samples": 64}, optim={"albedo_steps": 0})
    high = validate_job(job, base_dir=base)
    assert high["steps"] == 42 and high["optim"]["albedo_steps"] == 0
    assert high["render"] == {"resolution": 128, "batch": 2, "samples": 64}
    assert high["mesh"]["resolution"] == 256

    high["render"]["resolution"] = 1
    assert PRESETS["high"]["render"]["resolution"] == 128, "a job must not share the preset's dicts"


def test_the_pocket_teacher_has_its_own_cpu_sized_presets():
    pocket = validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket"}})
    assert pocket["preset"] == "standard"
    assert pocket["steps"] == POCKET_PRESETS["standard"]["steps"] < PRESETS["standard"]["steps"]
    assert pocket["render"] == {k: POCKET_PRESETS["standard"]["render"][k] for k in ("resolution", "batch", "samples")}
    assert pocket["mesh"]["resolution"] == POCKET_PRESETS["standard"]["mesh_resolution"]
    assert pocket["optim"]["opaque"] == 1000.0 and pocket["guidance"]["scale"] == DEFAULT_SCALE["pocket"]
    assert pocket["cameras"]["jitter"]["target"] == 0.0  # its objects are centred
    # Overrides still win, and other kinds keep the shared table.
    high = validate_job({"version": 1, "prompt": "a red cube", "preset": "high", "steps": 7,
                         "guidance": {"kind": "pocket"}, "optim": {"opaque": 0}})
    assert high["steps"] == 7 and high["optim"]["opaque"] == 0.0
    assert high["render"]["resolution"] == POCKET_PRESETS["high"]["render"]["resolution"]
    assert preset_table("pixel") is PRESETS and preset_table("pocket") is POCKET_PRESETS


@pytest.mark.parametrize("key, words", [("prompt", "a ceramic teapot"), ("negative_prompt", "ugly")])
def test_a_pocket_prompt_outside_its_world_is_refused_by_name(key, words):
    raw = {"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket"}, key: words}
    with pytest.raises(JobError) as caught:
        validate_job(raw)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: {words!r} is not in the pocket world")
    assert "a <colour> <shape>" in str(caught.value) and "pyramid" in str(caught.value)
    # Free spelling passes; other kinds take any words.
    assert validate_job(dict(raw, **{key: " The Purple Torus. "}))[key] == " The Purple Torus. "
    assert validate_job({"version": 1, "prompt": words, "guidance": {"kind": "pixel", "model": "o/m"}})


def test_numbers_accept_ints_and_grad_clip_ramp(base):
    job = design_example()
    job["guidance"].update(scale=7, grad_clip=[0, 2, 8.0, 1000], t_range=[0.2, 0.5])
    job["mesh"]["threshold"] = 10
    out = validate_job(job, base_dir=base)
    assert out["guidance"]["scale"] == 7.0 and isinstance(out["guidance"]["scale"], float)
    assert out["guidance"]["grad_clip"] == [0, 2.0, 8.0, 1000]
    assert out["mesh"]["threshold"] == 10.0


def test_camera_tolerates_float_noise_in_rotation():
    c, s = math.cos(0.3), math.sin(0.3)
    c2w = [[c, -s, 0, 1], [s, c, 0, 2], [0, 0, 1 + 5e-5, 3], [0, 0, 0, 1]]
    cam = validate_camera({"c2w": c2w, "width": 10, "height": 20, "fx": 5, "fy": 5, "cx": 5, "cy": 10,
                           "type": "PERSP", "name": "Camera.001"}, "cam")
    assert cam["c2w"][0][0] == pytest.approx(c) and cam["name"] == "Camera.001" and cam["height"] == 20
    c2w[2][2] = 1.01
    with pytest.raises(JobError, match=r"^cam\.c2w: rotation part is scaled"):
        validate_camera({"c2w": c2w, "width": 10, "height": 20, "fx": 5, "fy": 5, "cx": 5, "cy": 10}, "cam")
