"""What a crash leaves must tell the truth (issue 17): a run SIGKILLed at a write reads as
`interrupted` through results.read_status, never as a result; the next run removes the
half-written temp files and completes; a full disk is named, marked `failed`, and advises
init.resume only when a checkpoint is there. Kills and full disks are injected through
SDS_INJECT_FAULT (engine/train/faults.py); the run is a real one, on 2 reference views."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from blender_sds import results, scenes
from blender_sds.engine.train.run import RunFailed, run_job
from blender_sds.job import validate_job
from tiny_sd_jobs import REPO

# Each kill point is the moment a write's temp file is whole but not yet in place: every
# atomic write of the run, in its order (log.jsonl is appended, a line at a time).
KILL_POINTS = {
    "first-status": "kill@status.json",  # before the folder has any status.json
    "job": "kill@job.json",  # status says running
    "first-checkpoint": "kill@checkpoint.pt",  # step 1's: no checkpoint in place yet
    "preview": "kill@preview.png",  # the end's preview; step 1's checkpoint is in place
    "checkpoint": "kill@checkpoint.pt#2",  # the final checkpoint
    "status-complete": "kill@status.json#2",  # the mesh's temp written, status still running
    "mesh": "kill@mesh.npz",  # status already complete, mesh.npz not yet in place
}
RESUMED_AT = {"first-status": 0, "job": 0, "first-checkpoint": 0, "preview": 1, "checkpoint": 1}  # else 2


def tiny_job(folder) -> dict:
    """2 steps on 2 reference views at 16 px, a checkpoint after each: every write, in seconds."""
    path = scenes.write_reference_job(folder, views=2, size=16, steps=2)
    raw = json.loads(path.read_text())
    raw["render"]["samples"] = 16
    raw["mesh"]["resolution"] = 16
    raw["output"] = {"preview_every": 0, "checkpoint_every": 1, "progress_every": 1}
    path.write_text(json.dumps(raw))
    return raw


def leftovers(out) -> list[str]:
    return sorted(p.name for p in results.temp_files(out))


def resume_job(raw: dict, folder, out) -> dict:
    """The job again, continuing from the folder's checkpoint if the killed run left one."""
    checkpoint = out / results.CHECKPOINT_FILE
    init = {"checkpoint": str(checkpoint), "resume": True} if checkpoint.is_file() else {}
    return validate_job({**raw, "init": init}, base_dir=folder)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """One CLI run per kill point, all at once (each pays its own torch import)."""
    folder = tmp_path_factory.mktemp("job")
    raw = tiny_job(folder)
    procs = {}
    for name, spec in KILL_POINTS.items():
        out = folder / f"out-{name}"
        env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
               "SDS_INJECT_FAULT": spec}
        procs[name] = (out, subprocess.Popen([sys.executable, "-m", "blender_sds.engine", "run",
                                              str(folder / "job.json"), "--out", str(out)],
                                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    done = {name: (out, proc.wait(timeout=300), proc.stderr.read()) for name, (out, proc) in procs.items()}
    return folder, raw, done


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_at_a_write_reads_interrupted_and_resumes_clean(killed, point, one_torch_thread):
    folder, raw, done = killed
    out, code, stderr = done[point]
    assert code == -9, f"{KILL_POINTS[point]} did not kill the run (exit {code}): {stderr[-500:]}"
    found = results.read_status(out)
    assert found["state"] == "interrupted" and found["message"], found
    assert not (out / results.MESH_FILE).exists(), "a mesh.npz beside a run that did not complete"
    stale = leftovers(out)
    assert stale, "the kill came right at a write: its temp file must be there"
    events = []
    run_job(resume_job(raw, folder, out), out, device="cpu", on_event=events.append)
    assert results.read_status(out)["state"] == "complete"
    assert (out / results.MESH_FILE).is_file()
    assert leftovers(out) == [], f"the killed run's {stale} outlived the completed run"
    start = next(e for e in events if e["type"] == "start")["start_step"]
    assert start == RESUMED_AT.get(point, 2), "the resume did not continue from the last checkpoint in place"


def test_a_disk_full_from_the_start_names_the_status_file_and_leaves_nothing(tmp_path, monkeypatch, one_torch_thread):
    raw = tiny_job(tmp_path)
    monkeypatch.setenv("SDS_INJECT_FAULT", "disk-full@*")
    out = tmp_path / "out"
    with pytest.raises(RunFailed) as caught:
        run_job(validate_job(raw, base_dir=tmp_path), out, device="cpu")
    message = str(caught.value)
    assert f"is full (writing {out / results.STATUS_FILE})" in message and "run the job again" in message, message
    assert "init.resume" not in message, "advises resuming from a checkpoint that does not exist"
    assert results.read_status(out)["state"] == "none" and leftovers(out) == []


@pytest.mark.parametrize("write, resume_advice", [("checkpoint.pt", False), ("mesh.npz", True)])
def test_a_disk_that_fills_mid_run_is_named_and_marked_failed(tmp_path, monkeypatch, write, resume_advice,
                                                              one_torch_thread):
    raw = tiny_job(tmp_path)
    monkeypatch.setenv("SDS_INJECT_FAULT", f"disk-full@{write}")  # the first checkpoint, or the mesh at the end
    out = tmp_path / "out"
    with pytest.raises(RunFailed) as caught:
        run_job(validate_job(raw, base_dir=tmp_path), out, device="cpu")
    message = str(caught.value)
    assert f"is full (writing {out / write})" in message, message
    assert ("init.resume" in message) == resume_advice, message
    assert (f"from {out / results.CHECKPOINT_FILE}" in message) == resume_advice, message
    found = results.read_status(out)
    assert found["state"] == "failed" and found["message"] == message, found
    assert not (out / results.MESH_FILE).exists() and leftovers(out) == []


def test_the_reader_tells_dead_runs_and_incomplete_results(tmp_path, monkeypatch):
    def folder(name, status=None, mesh=False, files=()):
        path = tmp_path / name
        path.mkdir()
        if status is not None:
            (path / results.STATUS_FILE).write_text(status if isinstance(status, str) else json.dumps(status))
        if mesh:
            (path / results.MESH_FILE).write_bytes(b"mesh")
        for file in files:
            (path / file).write_bytes(b"")
        return path

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid is no longer alive
    read = {name: results.read_status(path)["state"] for name, path in {
        "alive": folder("alive", {"state": "running", "pid": os.getpid()}),
        "dead": folder("dead", {"state": "running", "pid": gone.pid}),
        "complete": folder("complete", {"state": "complete", "pid": gone.pid}, mesh=True),
        "complete-no-mesh": folder("complete-no-mesh", {"state": "complete", "pid": gone.pid}),
        "failed-with-mesh": folder("failed-with-mesh", {"state": "failed", "message": "x"}, mesh=True),
        "empty": folder("empty"),
        "mesh-only": folder("mesh-only", mesh=True),
        "dead-temp": folder("dead-temp", files=[f".status.json.tmp-{gone.pid}"]),
        "live-temp": folder("live-temp", files=[f".status.json.tmp-{os.getpid()}"]),
        "garbage": folder("garbage", "{not json"),
    }.items()}
    assert read == {"alive": "running", "dead": "interrupted", "complete": "complete",
                    "complete-no-mesh": "interrupted", "failed-with-mesh": "failed", "empty": "none",
                    "mesh-only": "none", "dead-temp": "interrupted", "live-temp": "running",
                    "garbage": "interrupted"}
    assert str(gone.pid) in results.read_status(tmp_path / "dead")["message"]

    # Another user's process: os.kill says PermissionError, which means it exists.
    def not_yours(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "kill", not_yours)
    assert results.read_status(tmp_path / "dead")["state"] == "running"
