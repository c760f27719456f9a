"""Each job's folder, and what a rerun does with what the batch folder already holds. Fast: the
folders are made by hand in the layout a run leaves (results.py), no engine, no Ray."""
import json
import os
import subprocess
import sys

import pytest

from blender_sds.engine.batch.manifest import Entry
from blender_sds.engine.batch.plan import FAILED_BEFORE, RUN, SKIP, PlanError, first_difference, folder_name, plan, slug
from blender_sds.job import validate_job


def job(prompt="a red cube", seed=0, steps=30):
    return validate_job({"version": 1, "prompt": prompt, "seed": seed, "steps": steps, "guidance": {"kind": "pocket"}})


def leave(folder, the_job, state, *, mesh=True, pid=None, message=None):
    """A folder as a run leaves it: job.json, status.json and (complete) mesh.npz."""
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(the_job), encoding="utf-8")
    status = {"state": state, "pid": pid if pid is not None else os.getpid(), "steps": the_job["steps"]}
    if message:
        status["message"] = message
    (folder / "status.json").write_text(json.dumps(status), encoding="utf-8")
    if mesh:
        (folder / "mesh.npz").write_bytes(b"not read by the plan")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("prompt, expected", [("a red cube", "a-red-cube"), ("  A Red CUBE!  ", "a-red-cube"),
                                              ("a blue cube with a white front", "a-blue-cube-with-a-white-front"),
                                              ("???", "job"), ("x" * 100, "x" * 40), ("ein Würfel", "ein-w-rfel")])
def test_slug(prompt, expected):
    assert slug(prompt) == expected


def test_folder_names_are_the_contract():
    assert folder_name(0, job()) == "000-a-red-cube-seed0"
    assert folder_name(12, job("a blue sphere", seed=7)) == "012-a-blue-sphere-seed7"
    assert folder_name(1234, job()) == "1234-a-red-cube-seed0"


def test_what_a_rerun_does_with_each_folder(tmp_path):
    jobs = [job("a red cube"), job("a blue sphere"), job("a green cone"), job("a white torus"), job("a red cone")]
    entries = [Entry(i + 1, j) for i, j in enumerate(jobs)]
    leave(tmp_path / folder_name(0, jobs[0]), jobs[0], "complete")
    leave(tmp_path / folder_name(1, jobs[1]), jobs[1], "failed", mesh=False, message="out of memory at step 3")
    leave(tmp_path / folder_name(2, jobs[2]), jobs[2], "running", mesh=False, pid=dead_pid())  # killed with its batch
    leave(tmp_path / folder_name(3, jobs[3]), job("a white torus", steps=31), "failed", mesh=False)  # the job changed
    items = plan(entries, tmp_path)
    assert [(p.index, p.action) for p in items] == [(0, SKIP), (1, FAILED_BEFORE), (2, RUN), (3, RUN), (4, RUN)]
    assert items[1].message == "out of memory at step 3" and items[1].line == 2
    assert [p.action for p in plan(entries, tmp_path, retry_failed=True)][:2] == [SKIP, RUN]


def test_a_complete_result_of_another_job_is_refused_not_overwritten(tmp_path):
    old = job(steps=30)
    leave(tmp_path / folder_name(0, old), old, "complete")
    with pytest.raises(PlanError, match=r"000-a-red-cube-seed0: holds a complete result of another job "
                                        r"\(optim.albedo_steps differs from line 1's\)"):
        plan([Entry(1, job(steps=40))], tmp_path)


def test_a_folder_being_written_is_refused(tmp_path):
    leave(tmp_path / folder_name(0, job()), job(), "running", mesh=False)  # this process: alive
    with pytest.raises(PlanError, match=f"a run \\(pid {os.getpid()}\\) is writing there now"):
        plan([Entry(1, job())], tmp_path)


def test_first_difference():
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}) is None
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == "a.b[1]"
    assert first_difference({"a": 1}, {"a": 1, "c": 2}) == "c"
    assert first_difference({"a": 1}, {"a": 1.0}) == "a"
