"""Every score-distillation rule through the real worker subprocess, on the tiny Stable
Diffusion model: one worker takes the jobs one after another (the protocol allows
several runs in one conversation), each ends with a mesh, and the run's log says how many
predictions each step asked the judge for (2 for sds and debiased at a scale other than 1,
4 for perp-neg with no overhead camera: none of its negative weights is then exactly zero,
3 for nfsd and csd (prompt, empty prompt, their negative), 4 for vsd (CFG's pair, the
estimator's pass and its training pass))."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tiny_sd_jobs import REPO, sd_job

from blender_sds import kinds, protocol, results

STEPS = 2
# Orbit cameras below the overhead bucket (60 degrees): Perp-Neg weighs both negatives of
# every such camera, so each of its steps asks for exactly four predictions.
CAMERAS = {"mode": "orbit", "elevation": [0.0, 30.0]}
EXPECTED = {"sds": 2, "perp-neg": 4, "debiased": 2, "nfsd": 3, "csd": 3, "vsd": 4}


def test_every_registered_rule_is_run():
    assert set(EXPECTED) == set(kinds.rule_names())


def _read(reader):
    """The next message that is not a heartbeat."""
    while True:
        message = reader.read()
        if message is None or message["type"] != "heartbeat":
            return message


def _run(reader, writer, job, out, timeout=120.0):
    """Send one run and read its messages to `done` or an error. It is sent the moment the previous
    run said `done`: a worker whose last run is only returning must take it, not answer `busy`."""
    deadline = time.monotonic() + timeout
    writer.write(protocol.run(job, str(REPO), str(out), device="cpu"))
    messages = []
    while time.monotonic() < deadline:
        message = _read(reader)
        assert message is not None, "the worker hung up"
        messages.append(message)
        if message["type"] in ("done", "error"):
            return messages
    raise AssertionError(f"no done or error within {timeout} s: {messages[-5:]}")


@pytest.fixture(scope="module")
def worker():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-u", "-m", "blender_sds.engine", "worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    reader, writer = protocol.MessageReader(proc.stdout), protocol.MessageWriter(proc.stdin)
    protocol.check_hello(_read(reader), "worker")
    writer.write(protocol.hello("addon"))
    yield reader, writer
    writer.close()  # EOF: the worker exits by itself
    try:
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("rule", list(EXPECTED))
def test_each_rule_runs_to_a_mesh_through_the_worker(worker, tiny_sd_folder, tmp_path, rule):
    reader, writer = worker
    job = sd_job(tiny_sd_folder, steps=STEPS, cameras=CAMERAS, mesh={"resolution": 24},
                 output={"preview_every": 0, "checkpoint_every": 0, "progress_every": 1})
    job["guidance"]["rule"] = rule
    out = tmp_path / "out"
    messages = _run(reader, writer, job, out)

    last = messages[-1]
    assert last["type"] == "done", last
    assert last["vertices"] > 0 and last["faces"] > 0
    assert (out / results.MESH_FILE).is_file()
    assert json.loads((out / results.STATUS_FILE).read_text())["state"] == "complete"
    ran = json.loads((out / results.JOB_FILE).read_text())["guidance"]
    assert ran["rule"] == rule and ran["view_dependent"] is True and ran["scale"] != 1.0
    assert (ran["perp_neg"] is not None) == (rule == "perp-neg")

    relayed = [m for m in messages if m["type"] == "progress"]
    logged = [json.loads(line) for line in (out / results.LOG_FILE).read_text().splitlines()]
    logged = [e for e in logged if e["type"] == "progress"]
    assert [e["step"] for e in logged] == [m["step"] for m in relayed] == list(range(1, STEPS + 1))
    assert [e["figures"]["predictions"] for e in logged] == [EXPECTED[rule]] * STEPS
    assert [m["figures"]["predictions"] for m in relayed] == [EXPECTED[rule]] * STEPS
