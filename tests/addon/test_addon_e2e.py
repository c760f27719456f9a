"""End to end through the installed add-on, a real worker subprocess and a tiny Stable
Diffusion built from configs: Generate, Refine from the scene cameras, and Export Job +
the engine's command line + Import Result, each giving a coloured mesh object."""
import os

from blender_sds import kinds


def check_object(obj, prompt="a red ball"):
    assert obj is not None
    assert obj["vertices"] > 0 and obj["faces"] > 0
    assert obj["col"] == ["FLOAT_COLOR", "POINT"]
    assert obj["col_active"] and obj["col_render"]
    lo, hi = obj["color_range"]
    assert 0.0 <= lo <= hi <= 1.0 + 1e-6
    assert obj["material_reads_col"]
    assert obj["job_prompt"] == prompt
    assert obj["checkpoint_exists"]
    assert obj["collection"] == [obj["active_collection"]]


def test_generate_refine_export_import(blender, run_scenario, tiny_sd):
    facts = run_scenario(blender, "e2e", model=tiny_sd)
    print(blender, facts["timings"])

    gen = facts["generate"]
    assert gen["returned"] == ["FINISHED"], gen["message"]
    check_object(gen["object"])
    assert gen["object"]["job_cameras_mode"] == "rig" and gen["object"]["job_rig"] == 2
    assert gen["object"]["job_init"] is None
    default = kinds.method(kinds.DEFAULT_METHOD).guidance  # the Method a new scene starts with
    assert {k: gen["ran_guidance"][k] for k in default} == default
    assert gen["step"] == gen["steps"] == 2 and gen["progress"] == 1.0
    assert gen["status"].startswith("Done")
    assert gen["preview"] and gen["preview"][0] > 0  # the end-of-run preview reached the panel
    assert not gen["running"]
    # results live in the redirected user folder, not in the add-on
    assert gen["object"]["result_dir"].startswith(facts["_user_dir"])

    ref = facts["refine"]
    assert ref["returned"] == ["FINISHED"], ref["message"]
    check_object(ref["object"])
    assert ref["object"]["name"] != gen["object"]["name"]
    assert ref["object"]["job_init"] == gen["object"]["checkpoint"]  # continued from the generated run
    assert ref["object"]["job_cameras_mode"] == "rig" and ref["object"]["job_rig"] == 2
    assert ref["object"]["job_steps"] == 1 and gen["object"]["job_steps"] == 2
    assert ref["original_still_there"] and ref["original_mesh_same"]
    assert ref["object"]["matrix_world"][0][3] == 0.5  # placed where the moved original is

    assert facts["export"]["returned"] == ["FINISHED"] and facts["export"]["exists"]
    assert facts["cli"]["code"] == 0, facts["cli"]["stderr"]
    imp = facts["import"]
    assert imp["returned"] == ["FINISHED"], imp["message"]
    check_object(imp["object"])
    assert len(facts["objects"]) == 2 + 3  # two cameras + generated, refined, imported

    assert facts["torch_loaded"] is False and facts["diffusers_loaded"] is False
    assert facts["ext_files_unchanged"]  # nothing was written inside the add-on folder
