"""The asynchronous path (timer-driven queue draining), Cancel, and the worker being
stopped when another file loads and when the add-on is disabled."""


def test_async_cancel_and_worker_shutdown(blender, run_scenario, tiny_sd):
    facts = run_scenario(blender, "lifecycle", model=tiny_sd)
    assert facts["timer_registered"]
    assert facts["reached_engine"], facts["stage_seen"]
    assert facts["running_flag"] is True
    assert facts["cancel_returned"] == ["FINISHED"]
    cancel = facts["cancel"]
    assert cancel["state"] == "cancelled", cancel
    assert cancel["status"].startswith("Cancelled")
    assert not cancel["worker_alive"] and not cancel["active"] and not cancel["running_after"]
    assert cancel["scene_same"]  # a cancelled run adds nothing

    assert facts["load_pre"] == {"worker_alive": False, "state": "cancelled", "active": False, "timer": False}
    assert facts["unregister"] == {"worker_alive": False, "state": "cancelled"}
    assert facts["torch_loaded"] is False
