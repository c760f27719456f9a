"""Seeded fuzzing of the job file as a careless or hostile user writes it (issue 17).

Every mutated job either validates or is refused with one line of at most 300 characters
naming the file or a key; none ends in another exception. Those the validator accepts run
through the real command line (`run JOB --out DIR --steps 2`, in-process) and end with exit
0 or 2, never 1 with internal text, each under its time limit.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import signal
from pathlib import Path

import pytest

from blender_sds.engine.__main__ import main as engine_main
from blender_sds.job import JobError, load_job

SEED = 17
MUTANTS = 300
RUNS = 8  # accepted mutants run end to end, half of them numbers off their scale: ~2.5 s each here
RUN_LIMIT_S = 120
TOP_KEYS = ("version", "prompt", "negative_prompt", "seed", "preset", "steps", "bounds", "guidance", "cameras",
            "render", "optim", "init", "mesh", "output", "job")
DEEP = "[" * 3000 + "]" * 3000
DIGITS = "9" * 5000
LONG_KEY = "k" * 5000

RIG_C2W = [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0], [0, 0, 0, 1]]


def pocket_job() -> dict:
    return copy.deepcopy({"version": 1, "prompt": "a red cube", "seed": 0, "preset": "draft", "steps": 2,
            "guidance": {"kind": "pocket"},
            "cameras": {"mode": "mixed", "rig": [{"c2w": RIG_C2W, "width": 32, "height": 24, "fx": 40.0,
                                                  "fy": 40.0, "cx": 16.0, "cy": 12.0, "name": "Camera"}],
                        "elevation": [-10.0, 45.0], "distance": [1.5, 2.0], "fovy": [40.0, 70.0],
                        "jitter": {"position": 0.02, "rotation": 1.0, "target": 0.0}},
            "render": {"resolution": 16, "batch": 1, "samples": 16}, "optim": {"lr": 0.01, "albedo_steps": 1},
            "mesh": {"resolution": 16, "threshold": "auto"}, "bounds": {"center": [0.0, 0.0, 0.0], "size": 2.0},
            "output": {"progress_every": 1, "preview_every": 0, "checkpoint_every": 0}})


def sd_job() -> dict:
    return {"version": 1, "prompt": "a ceramic teapot", "guidance": {"kind": "stable-diffusion",
            "model": "org/name", "scale": 100, "t_range": [0.02, 0.98], "grad_clip": [0, 0.5, 2.0, 100]},
            "init": {"checkpoint": None, "resume": False}}


# Text placeholders: values json.dumps cannot write (too deep) or writes otherwise (huge ints).
PLACEHOLDERS = {"@DEEP@": DEEP, "@DIGITS@": DIGITS}
VALUES = [None, True, False, 0, -1, 1, 2**70, 1e300, -1e300, 1e-300, float("nan"), float("inf"), "", "x",
          "a" * 5000, [], {}, [0.0] * 3, [[1.0]], {"a": 1}, "@DEEP@", "@DIGITS@", "../../../etc/passwd",
          "/dev/zero", "~", "\x00", "org/name", 0.5, 100000, -1e-9]


SCALES = [0, -1, 1e-9, 1e-3, 0.5, 2, 10, 1e3, 1e9]


def paths(node, prefix=()):
    """Every place in a job: object keys and list indices, leaves and branches."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from paths(value, prefix + (key,))


def mutate(job: dict, rng: random.Random) -> tuple[dict, str]:
    places = list(paths(job))
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        place = rng.choice(places)
        parent = job
        for key in place[:-1]:
            parent = parent[key]
        action, value = rng.random(), parent[place[-1]]
        if action < 0.45 and isinstance(value, (int, float)) and not isinstance(value, bool):
            # A number pushed off its scale: the physical-sense class a finite check lets through.
            parent[place[-1]] = type(value)(value * rng.choice(SCALES)) if value else rng.choice(SCALES)
        elif action < 0.55 and isinstance(parent, dict):
            del parent[place[-1]]
            places = list(paths(job))
        elif action < 0.65 and isinstance(parent, dict):
            parent[rng.choice((LONG_KEY, "unknown", "__proto__"))] = rng.choice(VALUES)
        else:
            parent[place[-1]] = rng.choice(VALUES)
            places = list(paths(job))
    text = json.dumps(job)  # NaN and Infinity written as such: the reader must refuse them
    for mark, value in PLACEHOLDERS.items():
        text = text.replace(f'"{mark}"', value)
    return job, text


@contextlib.contextmanager
def time_limit(seconds: int):
    def stop(signum, frame):
        raise TimeoutError(f"over {seconds} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def names_a_key_or_the_file(error: JobError, path: Path) -> bool:
    head = error.key.split(".")[0].split("[")[0]
    return error.key == str(path) or head in TOP_KEYS or head.startswith(("k" * 20, "unknown", "__proto__"))


def off_scale(rng: random.Random) -> tuple[dict, str]:
    """The pocket job with one number pushed off its scale (not the version, not a rotation)."""
    job = pocket_job()
    places = [p for p in paths(job) if "c2w" not in p and p != ("version",)]
    while True:
        place = rng.choice(places)
        parent = job
        for key in place[:-1]:
            parent = parent[key]
        value = parent[place[-1]]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parent[place[-1]] = type(value)(value * rng.choice(SCALES)) if value else rng.choice(SCALES)
            return job, json.dumps(job)


def test_mutated_jobs_validate_or_are_refused_by_name_and_accepted_ones_run(tmp_path, one_torch_thread):
    rng = random.Random(SEED)
    accepted, off_scale_accepted, refused = [], [], 0
    for i in range(MUTANTS + 100):
        # Mutants of every kind for the validator; then numbers off their scale, which pass it
        # more often, for half the runs.
        if i >= MUTANTS and len(off_scale_accepted) >= RUNS // 2:
            break
        job, text = mutate(pocket_job() if i % 3 else sd_job(), rng) if i < MUTANTS else off_scale(rng)
        path = tmp_path / f"job-{i:03d}.json"
        path.write_text(text)
        try:
            normalised = load_job(path)
        except JobError as error:
            message = str(error)
            assert "\n" not in message and len(f"error: {message}") <= 300, (i, message[:400])  # the CLI's line
            assert names_a_key_or_the_file(error, path), (i, message)
            refused += 1
            continue
        if normalised["guidance"]["kind"] == "pocket":
            (accepted if i < MUTANTS else off_scale_accepted).append(path)
    assert refused > MUTANTS // 2 and len(accepted) >= RUNS // 2, (refused, len(accepted))  # both outcomes drawn

    runs = accepted[:RUNS - len(off_scale_accepted)] + off_scale_accepted
    for path in runs:
        err = io.StringIO()
        with time_limit(RUN_LIMIT_S), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = engine_main(["run", str(path), "--out", str(path.with_suffix("")), "--steps", "2",
                                "--progress", "none"])
        lines = err.getvalue().strip().splitlines()
        assert code in (0, 2), (path.name, path.read_text()[:300], err.getvalue()[-800:])
        if code == 2:
            assert len(lines) == 1 and len(lines[0]) <= 300, (path.name, lines)
    assert len(runs) == RUNS
