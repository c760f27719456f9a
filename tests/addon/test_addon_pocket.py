"""The pocket world is offered as a labelled model choice (the offline demo): a short real
worker run makes a coloured object and prints its progress; a prompt outside the world is
an error report with the engine's list of words, not a traceback; "pocket" typed in Model
(the older way) still picks it.

Newest Blender only: the run goes through the same Generate and import as test_addon_e2e.py
(both versions there); what is particular to the pocket world (the Model Source choice, the
job it builds, the refusal) is add-on Python with no version-specific bpy API."""
from blender_sds import kinds
from bpy_harness import HUB_MODEL


def test_pocket_world_model_choice(newest_blender, run_scenario):
    facts = run_scenario(newest_blender, "pocket", model=HUB_MODEL)
    print(newest_blender, facts["generate"]["console"], facts["unknown_prompt"]["message"])

    assert facts["default_source"] == "STABLE_DIFFUSION"
    label, description = facts["sources"]["POCKET"]
    assert "offline demo" in label.lower() and "a red cube" in description
    assert facts["sd_guidance"]["kind"] == "stable-diffusion" and facts["sd_guidance"]["model"] == HUB_MODEL
    method = kinds.method(kinds.DEFAULT_METHOD).guidance  # the panel's Method, a new scene's default
    assert facts["pocket_guidance"] == {"kind": "pocket", **method}  # no model needed, Model left empty
    assert facts["legacy_guidance"] == {"kind": "pocket", **method}

    gen = facts["generate"]
    assert gen["returned"] == ["FINISHED"], gen["message"]
    obj = gen["object"]
    assert obj["job_prompt"] == "a red cube" and gen["job_guidance"]["kind"] == "pocket"
    assert obj["vertices"] > 0 and obj["col"] == ["FLOAT_COLOR", "POINT"] and obj["checkpoint_exists"]
    assert gen["changes"]["objects"]["gained"] == [obj["name"]]
    # a blocking run tells the console where it is: stages and steps
    console = [line for line in gen["console"] if line.startswith("SDS [a red cube]: ")]
    assert any("step 0/2 (0%" in line for line in console), gen["console"]
    assert any(line.endswith("extracting mesh") for line in console), console
    assert console[-1].endswith(": done"), console

    bad = facts["unknown_prompt"]
    assert bad["returned"] is None  # the operator reported an error
    for words in ("'a ceramic teapot' is not in the pocket world", "a <colour> <shape>", "cube", "purple",
                  "hange Prompt", "Model Source"):  # refused by the job check, before any worker starts
        assert words in bad["message"], (words, bad["message"])
    assert "Traceback" not in bad["message"] and "\n" not in bad["message"].strip()
    assert bad["status"] != "Running"  # refused before a worker started (the operator's report says why)
    assert bad["scene_same"] and not bad["running"]
    assert facts["torch_loaded"] is False
