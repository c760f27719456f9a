"""Every failure an artist can cause is reported with the problem and what to do, the
operator is cancelled, and the file is left as it was."""
from bpy_harness import HUB_MODEL


# case -> words the report must contain (the problem, and the remedy)
EXPECTED = {
    "empty_prompt": ["prompt is empty", "Prompt"],
    "no_camera": ["has none", "Add > Camera", "Orbit"],
    "none_selected": ["no camera is selected", "Orbit"],
    "orthographic": ["'Ortho' is orthographic", "Perspective"],
    "panoramic": ["'Ortho' is panoramic", "Perspective"],
    "worker_missing": ["Worker Python not found", "/nonexistent/bin/python3", "Preferences"],
    "worker_empty": ["No Worker Python is set", "Managed Environment"],
    "worker_exits": ["exited at once", "exit code 3", "fatal: this is not a worker", "torch"],
    "worker_without_torch": ["cannot load the engine", "torch"],
    "remote": ["No remote worker address is set", "Python Interpreter"],
    "bad_overrides_json": ["Job Overrides is not valid JSON"],
    "bad_override_value": ["render.resolution", "Job Overrides"],
    "import_not_a_result": ["No mesh.npz", "finished result folder"],
    "refine_plain_object": ["was not made by SDS", "select a generated object"],
    "export_to_folder": ["is a folder", "file name"],
    "setup_worker_offline": ["online access is off", "Preferences > System > Network"],
}




def test_artist_errors_are_reported_and_change_nothing(blender, run_scenario):
    facts = run_scenario(blender, "errors", model=HUB_MODEL)
    assert facts["online_access"] is False  # the bpy module starts with online access off
    for case, words in EXPECTED.items():
        got = facts[case]
        assert got["returned"] is None, (case, got)  # bpy.ops raised: the operator reported an error
        for word in words:
            assert word in got["message"], (case, word, got["message"])
        assert got["scene_same"], (case, got)
        assert not got["running"], case
    # failures of a started run are also left on the panel
    assert "exited at once" in facts["worker_exits"]["last_error"]
    # Cancel with nothing running is a warning, not an error
    assert facts["cancel_idle"]["returned"] == ["CANCELLED"]
    assert facts["torch_loaded"] is False
