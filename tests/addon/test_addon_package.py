"""The extension zip: Blender's strict validator accepts it, it holds what the worker needs,
and it installs and registers the way a user installs it (bpy 4.2 and 4.5)."""
import shutil
import sys
import zipfile

import pytest

from bpy_harness import REPO

sys.path.insert(0, str(REPO))
import build_addon  # noqa: E402


def test_zip_layout(addon_zip):
    names = set(zipfile.ZipFile(addon_zip).namelist())
    assert addon_zip.name == "blender_sds-0.1.0.zip"
    for required in ("blender_manifest.toml", "__init__.py", "protocol.py", "job.py", "addon/__init__.py",
                     "addon/rig.py", "engine/service/worker.py", "engine/train/run.py", "engine/__main__.py",
                     "vendor/requirements-worker.txt"):
        assert required in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/")]


def test_validator_rejects_a_bad_manifest(tmp_path):
    """The build really runs Blender's strict validator: a tagline ending in '.' is refused."""
    script, tags = build_addon.find_blender_ext()
    src = tmp_path / "src"
    src.mkdir()
    build_addon.stage(src)
    build_addon._run_validator(script, tags, "validate", str(src))  # the real manifest passes
    text = (src / "blender_manifest.toml").read_text()
    (src / "blender_manifest.toml").write_text(text.replace('version = "0.1.0"', 'version = "0.1"'))
    with pytest.raises(build_addon.BuildError, match="version"):
        build_addon._run_validator(script, tags, "validate", str(src))


def test_installs_and_registers(blender, run_scenario):
    facts = run_scenario(blender, "install")
    assert facts["package"] == "bl_ext.user_default.blender_sds"
    assert facts["ext_dir"].startswith(facts["user_resources"])
    assert "__init__.py" in facts["files"] and "engine/service/worker.py" in facts["files"]
    assert all(facts["ops"].values()), facts["ops"]
    assert facts["panel_category"] == "SDS"
    assert facts["prefs"]["model"] == "stabilityai/stable-diffusion-2-1-base"
    assert facts["prefs"]["device"] == "AUTO" and facts["prefs"]["worker_mode"] == "PYTHON"
    for name in ("prompt", "negative_prompt", "preset", "seed", "camera_source", "bounds_object", "bounds_size",
                 "status", "progress", "preview_image"):
        assert name in facts["scene_props"]
    assert facts["camera_sources"] == ["MIXED", "ORBIT", "SCENE", "SELECTED"]
    assert facts["presets"] == ["DRAFT", "HIGH", "STANDARD"]
    # the cache lives in the extension's user folder, never in the add-on folder
    assert facts["cache_dir"].startswith(facts["user_resources"])
    assert not facts["cache_dir"].startswith(facts["ext_dir"])
    assert not facts["torch_loaded"]
    assert facts["after_disable"] is False and facts["after_enable"] is True
