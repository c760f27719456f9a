"""The batch task outside Ray: a worker that cannot see the driver's folder sends the result back
and the driver writes it whole; a job's own failure comes back as a message; a lost job's folder
is marked failed; the judge's weights are kept per process (weights_cache)."""
import json
import os
import subprocess
import sys

import pytest

from blender_sds.engine.batch.runner import mark_failed, store_payload
from blender_sds.engine.batch.tasks import marker_name, run_one
from blender_sds.engine.guidance.predictors import weights_cache
from blender_sds.job import validate_job
from blender_sds.results import read_status


@pytest.fixture
def fresh_cache():
    weights_cache.enable(False)
    before = weights_cache.stats()
    yield before
    weights_cache.enable(False)  # run_one turned it on: no other test may meet a kept judge


def pocket_job(**extra):
    return validate_job({"version": 1, "prompt": "a red cube", "steps": 1, "guidance": {"kind": "pocket"},
                         "mesh": {"resolution": 16, "target_faces": 0, "smooth": 0},
                         "output": {"preview_every": 0, "checkpoint_every": 0}, **extra})


def test_a_worker_without_the_folder_sends_the_result_back(tmp_path, fresh_cache, one_torch_thread):
    driver = tmp_path / "driver"
    driver.mkdir()
    result = run_one(pocket_job(), 0, "000-a-red-cube-seed0", str(driver), "no-marker-here", 1, False)
    assert result["status"] == "complete" and result["message"] == ""
    assert list(driver.iterdir()) == []  # nothing written where the worker could not see the marker
    payload = result["payload"]
    assert sorted(payload) == ["checkpoint.pt", "job.json", "log.jsonl", "mesh.npz", "preview.png", "status.json"]
    folder = driver / "000-a-red-cube-seed0"
    store_payload(folder, payload)
    assert read_status(folder)["state"] == "complete"
    assert all((folder / name).read_bytes() == data for name, data in payload.items())



def test_a_job_that_fails_comes_back_failed_with_its_message(tmp_path, fresh_cache, one_torch_thread):
    not_a_checkpoint = tmp_path / "old.pt"
    not_a_checkpoint.write_bytes(b"hello")
    job = pocket_job(init={"checkpoint": str(not_a_checkpoint)})
    (tmp_path / marker_name("tok")).write_text("")
    result = run_one(job, 0, "000-a-red-cube-seed0", str(tmp_path), "tok", 1, False)
    assert result["status"] == "failed" and "payload" not in result  # the marker was there: written in place
    assert result["message"].startswith(f"init.checkpoint: {not_a_checkpoint}: is not a readable blender-sds "
                                        f"checkpoint")
    status = read_status(tmp_path / "000-a-red-cube-seed0")
    assert (status["state"], status["message"]) == ("failed", result["message"])


def test_a_lost_job_is_marked_failed(tmp_path):
    folder = tmp_path / "000-a-red-cube-seed0"
    folder.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (folder / "status.json").write_text(json.dumps({"state": "running", "pid": child.pid, "steps": 1}))
    assert read_status(folder)["state"] == "interrupted"
    mark_failed(folder, pocket_job(), "its Ray worker process (pid 1) died while running it")
    status = read_status(folder)
    assert (status["state"], status["message"]) == ("failed", "its Ray worker process (pid 1) died while running it")
    assert json.loads((folder / "job.json").read_text())["prompt"] == "a red cube"
    empty = tmp_path / "never-started"
    mark_failed(empty, pocket_job(), "the machine running it left the Ray cluster")
    assert read_status(empty)["state"] == "failed"


def test_the_weights_cache_keeps_one_judge_per_process(fresh_cache):
    loads = []

    def loader(name):
        def load():
            loads.append(name)
            return {"unet": object(), "text_encoder": object()}
        return load

    first = weights_cache.load(("sd", "a"), loader("a"))  # off: every load is fresh, nothing kept
    assert weights_cache.load(("sd", "a"), loader("a")) is not first and not weights_cache.holds(first["unet"])
    weights_cache.enable()
    a1 = weights_cache.load(("sd", "a"), loader("a"))
    a2 = weights_cache.load(("sd", "a"), loader("a"))
    assert a2 is not a1 and a2["unet"] is a1["unet"] and weights_cache.holds(a1["text_encoder"])
    a2.pop("unet")  # a caller pops its parts; the kept ones stay
    assert weights_cache.load(("sd", "a"), loader("a"))["unet"] is a1["unet"]
    b = weights_cache.load(("sd", "b"), loader("b"))  # another judge replaces it: one in memory at a time
    assert not weights_cache.holds(a1["unet"]) and weights_cache.holds(b["unet"])
    assert weights_cache.load(("sd", "b"), loader("b"), keep=False)["unet"] is not b["unet"]  # low VRAM: fresh
    assert loads == ["a", "a", "a", "b", "b"]
    stats = weights_cache.stats()
    assert (stats["loads"] - fresh_cache["loads"], stats["hits"] - fresh_cache["hits"]) == (5, 2)


def test_a_rerun_with_nothing_to_run_imports_neither_torch_nor_ray(tmp_path):
    """Skipping reads folders and writes the summary and the sheet: no engine, no cluster."""
    job = pocket_job()
    folder = tmp_path / "out" / "000-a-red-cube-seed0"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(job))
    (folder / "status.json").write_text(json.dumps({"state": "complete", "pid": 1, "steps": 1}))
    (folder / "mesh.npz").write_bytes(b"")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(job) + "\n")
    code = (f"import sys; from blender_sds.engine.__main__ import main; "
            f"code = main(['batch', {str(manifest)!r}, '--out', {str(tmp_path / 'out')!r}, '--progress', 'none']); "
            f"heavy = sorted(m for m in ('torch', 'ray', 'numpy') if m in sys.modules); "
            f"assert (code, heavy) == (0, []), (code, heavy)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(j["status"], j["files"]) for j in summary["jobs"]] == [("skipped", ["job.json", "mesh.npz", "status.json"])]
