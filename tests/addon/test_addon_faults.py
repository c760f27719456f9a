"""Faults the add-on survives, each leaving the scene as it was, the worker gone, and a
message that says what happened and what to do; and the REMOTE mode against a real
`serve`. (Cancel while stepping, another file loaded and the add-on disabled mid-run are
in test_addon_lifecycle.py; a worker that exits at once or lacks torch in
test_addon_errors.py.)

These scenarios run in the newest Blender only: the code under test (session, clients,
runner) uses no version-specific bpy API, and each scenario costs real worker runs.
"""
import sys

import pytest

from bpy_harness import REPO

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from serve_client import (FREED_WITHIN, TOKEN, files_outside, start_serve, stop_serve, takes_new_jobs,  # noqa: E402
                          wait_for, why_busy)


# The panel's preview image of the run (the final preview arrives before the result): the
# only datablock a run that ends without a result may leave, and it is the add-on's own.
PREVIEW_ONLY = {"images": {"gained": ["SDS Preview"], "lost": []}}


def test_worker_faults_leave_the_scene_as_it_was_and_say_what_happened(newest_blender, run_scenario, tiny_sd):
    facts = run_scenario(newest_blender, "faults", model=tiny_sd)

    def failed(case, *words):
        got = facts[case]
        assert got["returned"] is None, (case, got)  # the operator reported an error
        for word in words:
            assert word in got["message"], (case, word, got["message"])
        assert words[0] in got["last_error"], (case, got)  # also left on the panel
        assert got["scene_same"] and not got["running"] and not got["worker_alive"], (case, got)
        assert got["state"] == "failed", (case, got)
        return got

    got = failed("sigkill", "stopped unexpectedly", "exit code -9", "Low VRAM")
    assert got["did"] and got["worker_code"] == -9
    got = failed("silent", "sent nothing for 5 s", "Worker Timeout")
    assert got["did"] and got["worker_code"] == -9  # stopped with SIGSTOP, so it had to be killed
    failed("not_python", "exited at once", "exit code 1", "invalid option", "Worker Python", "torch")
    failed("other_version", "protocol version 99", "same release", "Worker Python")
    got = failed("garbage_first", "not a message", "Welcome to ExamplePython", "Worker Python")
    assert got["seconds"] < 30  # killed, not left to its 60 s sleep
    got = failed("garbage_mid", "not a message", "this is not a message")
    assert got["seconds"] < 30

    at_once = facts["cancel_at_once"]
    assert at_once["greeted_at_cancel"] is False and at_once["returned"] == [["FINISHED"], ["FINISHED"]]
    assert at_once["state"] == "cancelled" and at_once["status"].startswith("Cancelled"), at_once
    assert at_once["changes"] == {} and not at_once["worker_alive"] and not at_once["active"]

    late = facts["cancel_late"]
    assert late["stage_at_cancel"] in ("writing result", "extracting mesh"), late
    assert late["state"] == "cancelled" and "already finished" in late["message"], late
    assert "Import Result" in late["message"] and late["result_kept"]
    assert late["changes"] in ({}, PREVIEW_ONLY) and not late["worker_alive"] and not late["active"]

    truncated = facts["truncated"]
    assert truncated["state_before_import"] == "done"
    assert "damaged" in truncated["last_error"] and truncated["status"] == "Failed", truncated
    assert truncated["changes"] in ({}, PREVIEW_ONLY) and not truncated["worker_alive"]
    vanished = facts["vanished"]
    assert vanished["error"].startswith("ArtistError: No mesh.npz in"), vanished
    assert vanished["last_error"].startswith("No mesh.npz") and vanished["changes"] in ({}, PREVIEW_ONLY)
    assert facts["torch_loaded"] is False


@pytest.fixture
def server(tmp_path):
    serve_tmp = tmp_path / "server"
    serve_tmp.mkdir()
    proc, port = start_serve(serve_tmp)
    yield serve_tmp, proc, port
    stop_serve(proc)


def test_remote_worker_generates_refines_and_refuses_like_a_local_one(newest_blender, run_scenario, tiny_sd,
                                                                       server):
    serve_tmp, proc, port = server
    facts = run_scenario(newest_blender, "remote", model=tiny_sd, port=port, token=TOKEN)
    gen = facts["generate"]
    assert gen["returned"] == ["FINISHED"], gen["message"]
    obj = gen["object"]
    assert obj["vertices"] > 0 and obj["col"] == ["FLOAT_COLOR", "POINT"] and obj["checkpoint_exists"]
    assert obj["result_dir"].startswith(facts["cache"])  # results came back into the add-on's own folder
    assert {"mesh.npz", "checkpoint.pt", "job.json", "preview.png", "status.json"} <= set(gen["files"])
    assert gen["job_model"] == tiny_sd  # the stored job names our model, not the server's copy
    assert gen["preview"] and gen["preview"][0] > 0

    ref = facts["refine"]
    assert ref["returned"] == ["FINISHED"], ref["message"]
    assert ref["object"]["job_init"] == obj["checkpoint"] and ref["object"]["result_dir"] != obj["result_dir"]

    for case, words in {"wrong_token": ["wrong token", "Token"], "no_token": ["needs a token", "Token"],
                        "no_server": ["could not connect", "127.0.0.1:9", "Address, Token and Fingerprint"],
                        "wrong_fingerprint": ["not the Fingerprint set", facts["fingerprint"]],
                        "no_fingerprint": ["no Fingerprint is set", facts["fingerprint"]],
                        "bad_address": ["must be host:port", "Address"]}.items():
        got = facts[case]
        assert got["returned"] is None and got["scene_same"], (case, got)
        for word in words:
            assert word in got["message"], (case, word, got["message"])

    load = facts["load_pre"]
    assert load == {"reached": "running", "state": "cancelled", "connected": False, "active": False}, load
    assert facts["torch_loaded"] is False

    # The server stopped the abandoned job and takes the next one; it wrote only under its root.
    assert wait_for(lambda: takes_new_jobs(port), FREED_WITHIN, poll=1.0), \
        f"the server stayed busy after the add-on went away\n{why_busy(serve_tmp)}"
    assert files_outside(serve_tmp) == [] and proc.poll() is None
    jobs = list((serve_tmp / "root" / "jobs").iterdir())
    assert len(jobs) >= 3 and all((j / "inputs").is_dir() for j in jobs)
