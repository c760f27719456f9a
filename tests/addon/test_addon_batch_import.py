"""Issue 15 on the Blender side: Import Result on a batch folder brings every finished result in
as its own object named by prompt and seed, in a grid with no two overlapping, as one undo step,
and names what it skipped; the remote preferences' Fingerprint and TLS reach the client; a job
waiting in a remote worker's queue shows its place in line on the progress line.

The batch is made from one real 4-step pocket run (the engine's own writer: status, job,
mesh), copied under the folder names and job.json prompts and seeds a batch would give, one
copy scaled 1.8x (a larger result sets the grid's spacing), and the folders a batch leaves
when a job is killed or fails; summary.json in the batch's shape (engine/batch/summary.py),
lying about the killed one (it says complete, and is not to be trusted), with a failed job
that never got a folder. Both Blender versions: the undo stack and the importer's datablocks
are what differ between them.
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bpy_harness import REPO

sys.path.insert(0, str(REPO))

MARGIN = 0.25  # batch_import.MARGIN: the gap between neighbours, as a fraction of the largest footprint
SCALED = 1.8


def pocket_job(**extra) -> dict:
    return {"version": 1, "prompt": "a red cube", "seed": 0, "steps": 4, "guidance": {"kind": "pocket"},
            "render": {"resolution": 16, "samples": 16}, "mesh": {"resolution": 16},
            "output": {"preview_every": 0, "checkpoint_every": 0, "progress_every": 2}, **extra}


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def made(tmp_path_factory, one_torch_thread):
    """One real result folder (read only: copy it)."""
    from blender_sds.engine.train.run import run_job
    from blender_sds.job import validate_job
    return run_job(validate_job(pocket_job()), tmp_path_factory.mktemp("made") / "out", device="cpu")


def copy_result(made, folder, prompt, seed, scale=1.0, status=None, mesh=True):
    shutil.copytree(made, folder, ignore=shutil.ignore_patterns("checkpoint.pt"))
    job = json.loads((folder / "job.json").read_text())
    job.update(prompt=prompt, seed=seed)
    (folder / "job.json").write_text(json.dumps(job))
    if scale != 1.0:
        with np.load(folder / "mesh.npz") as m:
            arrays = {k: m[k] for k in m.files}
        arrays["vertices"] = (arrays["vertices"] * scale).astype(np.float32)
        np.savez(folder / "mesh.npz", **arrays)
    if status is not None:
        (folder / "status.json").write_text(json.dumps(status))
    if not mesh:
        (folder / "mesh.npz").unlink()
    return folder


# (folder, prompt, seed, what copy_result gets, what summary.json says): in the batch's order
JOBS = [
    ("000-a-red-cube-seed0", "a red cube", 0, {}, "complete"),
    ("001-a-red-cube-seed1", "a red cube", 1, {}, "skipped"),  # made by an earlier run of the batch
    ("002-a-blue-cone-seed0", "a blue cone", 0, {"scale": SCALED}, "complete"),
    ("003-a-red-cube-seed3", "a red cube", 3, {"status": "killed"}, "complete"),  # summary lies
    ("004-a-green-torus-seed0", "a green torus", 0, {"status": "failed", "mesh": False}, "failed"),
    ("005-a-red-ball-seed5", "a red ball", 5, None, "failed"),  # never got a folder
    ("006-a-red-cube-seed0", "a red cube", 0, {}, "complete"),  # the same prompt and seed again
]
COMPLETE = ["000-a-red-cube-seed0", "001-a-red-cube-seed1", "002-a-blue-cone-seed0", "006-a-red-cube-seed0"]
NAMES = ["a red cube · seed 0", "a red cube · seed 1", "a blue cone · seed 0", "a red cube · seed 0.001"]


def make_batch(made, root, jobs):
    root.mkdir()
    summary = {"version": 1, "jobs": [], "complete": 0, "failed": 0}
    for index, (folder, prompt, seed, how, said) in enumerate(jobs):
        if how is not None:
            how = dict(how)
            status = {"killed": {"state": "running", "pid": dead_pid(), "steps": 4},
                      "failed": {"state": "failed", "pid": 1, "steps": 4, "message": "out of memory"}}.get(
                how.pop("status", None))
            copy_result(made, root / folder, prompt, seed, status=status, **how)
        summary["jobs"].append({"index": index, "folder": folder, "prompt": prompt, "seed": seed, "status": said,
                                "seconds": 1.0, "message": "" if how else "its machine left the cluster",
                                "files": []})
        summary["failed" if said == "failed" else "complete"] += 1
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def footprint_box(folder):
    with np.load(folder / "mesh.npz") as m:
        v = m["vertices"].astype(np.float64)
    return v.min(axis=0), v.max(axis=0)


def test_a_batch_folder_becomes_a_grid_of_its_finished_results_in_one_undo_step(blender, run_scenario, made,
                                                                                tmp_path):
    batch = make_batch(made, tmp_path / "batch", JOBS)
    no_summary = tmp_path / "no-summary"  # the same result folders, summary.json lost
    no_summary.mkdir()
    for name in ("001-a-red-cube-seed1", "000-a-red-cube-seed0", "004-a-green-torus-seed0"):
        shutil.copytree(batch / name, no_summary / name)
    none_complete = make_batch(made, tmp_path / "none-complete", [JOBS[3], JOBS[4]])
    facts = run_scenario(blender, "batch_import", batch=str(batch), no_summary=str(no_summary),
                         none_complete=str(none_complete), order=[j[0] for j in JOBS], timeout=300)

    got = facts["batch"]
    assert got["returned"] == ["FINISHED"], got
    objects = got["objects"]
    assert [o["folder"] for o in objects] == COMPLETE, objects  # one per complete result, in the batch's order
    assert [o["name"] for o in objects] == NAMES, objects
    assert set(got["changes"]) == {"objects", "meshes", "materials"}, got["changes"]
    assert len(got["changes"]["objects"]["gained"]) == len(COMPLETE) and not got["changes"]["objects"]["lost"]
    assert all(o["selected"] and o["rotation_scale_kept"] for o in objects) and got["active"] == NAMES[0]

    # The report: how many, and each folder left out with why (summary.json said 003 was complete).
    report = got["printed"]
    assert f"imported 4 of 7 from {batch}" in report, report
    for word in ("3 not complete", "003-a-red-cube-seed3 (interrupted", "ended without saying so",
                 "004-a-green-torus-seed0 (failed: out of memory)",
                 "005-a-red-ball-seed5 (failed: its machine left the cluster)"):
        assert word in report, (word, report)

    # The grid: 2 x 2 cells as wide as the largest footprint plus the margin; each result moved
    # (XY only) to its cell's centre, the first left where it was made; no two boxes overlap.
    boxes = [np.array(o["box"]) for o in objects]
    made_boxes = [footprint_box(batch / name) for name in COMPLETE]
    tol = 1e-5 * max(float(np.abs(b).max()) for b in made_boxes)  # float32 coordinates through a translation
    for (lo, hi), (mlo, mhi), o in zip(boxes, made_boxes, objects):
        assert np.allclose(hi - lo, mhi - mlo, atol=tol), o  # the shape as made
        assert abs(lo[2] - mlo[2]) < tol and abs(hi[2] - mhi[2]) < tol, o  # only moved in X and Y
    largest = max(float(max(hi[0] - lo[0], hi[1] - lo[1])) for lo, hi in made_boxes)
    spacing = largest * (1 + MARGIN)
    anchor = (made_boxes[0][0][:2] + made_boxes[0][1][:2]) / 2
    for i, (lo, hi) in enumerate(boxes):
        row, column = divmod(i, 2)
        centre = (lo[:2] + hi[:2]) / 2
        assert np.allclose(centre, anchor + [column * spacing, -row * spacing], atol=tol), (i, centre)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            gap = max(max(boxes[j][0][k] - boxes[i][1][k], boxes[i][0][k] - boxes[j][1][k]) for k in (0, 1))
            assert gap >= largest * MARGIN - tol, (NAMES[i], NAMES[j], gap)  # apart by at least the margin

    assert got["after_undo"] == {}, got["after_undo"]  # one undo takes every one of them back

    loose = facts["no_summary"]  # result folders without summary.json: a batch too, by their numbers
    assert loose["returned"] == ["FINISHED"], loose
    assert loose["names"] == sorted(NAMES[:2]), loose
    assert f"imported 2 of 3 from {no_summary}" in loose["printed"], loose["printed"]
    assert "004-a-green-torus-seed0 (failed: out of memory)" in loose["printed"]

    nothing = facts["none_complete"]  # refused in one line, the file as it was
    assert nothing["returned"] is None and nothing["changes"] == {}, nothing
    for word in (f"No finished result in the batch folder {none_complete}", "2 not complete",
                 "003-a-red-cube-seed3 (interrupted", "004-a-green-torus-seed0 (failed: out of memory)"):
        assert word in nothing["message"], (word, nothing["message"])
    assert "\n" not in nothing["message"] and "Traceback" not in nothing["message"]


def test_remote_preferences_reach_the_client_and_a_queued_job_shows_its_place(newest_blender, run_scenario,
                                                                             tmp_path):
    facts = run_scenario(newest_blender, "remote_prefs", timeout=120)

    assert facts["defaults"] == {"tls": True, "fingerprint": ""}  # TLS unless the artist turns it off
    tls, plain = facts["drawn_tls"], facts["drawn_plain"]
    assert {"remote_address", "remote_token", "remote_tls", "remote_fingerprint"} <= set(tls), tls
    assert any("fingerprint" in x and "serve" in x for x in tls if x.startswith("label:")), tls  # none pasted yet
    assert "remote_fingerprint" not in plain and any("loopback" in x for x in plain), plain

    seen = facts["queued"]
    line = {name: (s["status"], s["progress_line"]) for name, s in seen.items()}
    assert line["second"] == ("Queued: 2nd of 3 on the remote worker", ["Queued: 2nd of 3 on the remote worker"])
    assert line["heartbeat"] == line["second"]  # a heartbeat while waiting keeps the place
    assert line["first"][0] == "Queued: 1st of 3 on the remote worker", line
    assert line["newer_type"] == line["first"]  # a type this add-on does not know changes nothing
    assert line["stage"][0] == "Loading model", line  # out of the queue: the usual progress
    assert line["progress"] == ("Loading model", ["Step 3/10 · 7s left"]), line
    assert all(not s["finished"] for s in seen.values()), seen
    assert facts["console"][:3] == ["SDS [a red cube]: waiting for the engine",
                                    "SDS [a red cube]: queued: 2nd of 3 on the remote worker",
                                    "SDS [a red cube]: queued: 1st of 3 on the remote worker"], facts["console"]

    clients = facts["clients"]  # stripped of the spaces a paste brings; nothing connects before start()
    assert clients["pinned"] == {"fingerprint": facts["fingerprint"], "tls": True, "connected": False}, clients
    assert clients["plain"] == {"fingerprint": "", "tls": False, "connected": False}, clients
