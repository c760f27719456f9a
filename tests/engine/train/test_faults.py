"""Faults the engine survives: out of memory, a loss that turns NaN, a full disk, an
unwritable output folder. Injected through SDS_INJECT_FAULT; the handling is the real one."""
import json

import numpy as np
import torch
import pytest

from blender_sds.engine.train.run import RunFailed, is_out_of_memory, out_of_memory_message, run_job
from blender_sds.job import validate_job
from tiny_sd_jobs import engine, sd_job


def status_of(out):
    return json.loads((out / "status.json").read_text())


def test_out_of_memory_says_what_to_do_and_leaves_no_result(sd_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SDS_INJECT_FAULT", "oom@2")
    with pytest.raises(RunFailed, match=r"out of memory \(RAM\) at step 2: set guidance.low_vram"):
        run_job(validate_job(sd_job(sd_folder)), tmp_path / "out", device="cpu")
    assert not (tmp_path / "out" / "mesh.npz").exists()
    assert status_of(tmp_path / "out")["state"] == "failed"


def test_every_devices_out_of_memory_is_recognised():
    """The CPU allocator's own failure (a real one: far past any machine's memory), and CUDA's and
    MPS's wording, all get the out-of-memory advice; other errors do not."""
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_out_of_memory(cpu.value), str(cpu.value)
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"))
    assert not is_out_of_memory(RuntimeError("cannot reshape tensor of 0 elements"))
    assert not is_out_of_memory(ValueError("render.samples: out of memory is not a value"))
    assert out_of_memory_message("cpu", 3).startswith("out of memory (RAM) at step 3: ")
    assert out_of_memory_message("cuda:1", 3).startswith("out of GPU memory at step 3: ")


def test_a_nan_loss_is_skipped_and_counted(sd_folder, tmp_path, monkeypatch):
    # NaN in the last two of 6 steps: they are skipped, the field stays finite, the run completes.
    monkeypatch.setenv("SDS_INJECT_FAULT", "nan@4")
    events = []
    out = run_job(validate_job(sd_job(sd_folder)), tmp_path / "out", device="cpu", on_event=events.append)
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[-1]["figures"]["skipped_steps"] == 2 and np.isfinite(progress[-1]["loss"])
    mesh = dict(np.load(out / "mesh.npz"))
    assert np.isfinite(mesh["vertices"]).all() and np.isfinite(mesh["colors"]).all()
    assert status_of(out)["state"] == "complete"


def test_a_loss_that_stays_nan_stops_the_run_with_a_message(sd_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SDS_INJECT_FAULT", "nan@0")
    job = validate_job(sd_job(sd_folder, steps=12, output={"progress_every": 6, "preview_every": 0,
                                                            "checkpoint_every": 0}))
    with pytest.raises(RunFailed, match="NaN or infinite for 6 steps in a row"):
        run_job(job, tmp_path / "out", device="cpu")
    assert status_of(tmp_path / "out")["state"] == "failed" and not (tmp_path / "out" / "mesh.npz").exists()


def test_a_full_disk_fails_cleanly_through_the_cli(sd_folder, tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps(sd_job(sd_folder)))
    proc = engine("run", str(job), "--out", str(tmp_path / "out"), env={"SDS_INJECT_FAULT": "disk-full@checkpoint"})
    assert proc.returncode == 1, proc.stderr
    # The first checkpoint was the one that failed: no resume advice for a file that is not there.
    assert "is full" in proc.stderr and "run the job again (no checkpoint was written)" in proc.stderr
    assert "init.resume" not in proc.stderr
    assert status_of(tmp_path / "out")["state"] == "failed"
    assert not (tmp_path / "out" / "mesh.npz").exists()
    assert not list((tmp_path / "out").glob(".*.tmp-*")), "a half-written file was left behind"


def test_an_output_path_that_is_a_file_is_named(sd_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    job = tmp_path / "job.json"
    job.write_text(json.dumps(sd_job(sd_folder)))
    proc = engine("run", str(job), "--out", str(blocker / "out"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --out: cannot write to"), proc.stderr
