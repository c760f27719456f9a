"""The Method choice: `scene.sds.method` offers the registry's score-distillation methods
(blender_sds/kinds/) with their labels and costs as tooltips, starts at kinds.DEFAULT_METHOD,
is drawn in the panel, and Generate puts the method's guidance keys into the job before Job
Overrides (which still win, nested keys such as ESD's estimator key by key). One short real
run per method, on the tiny Stable Diffusion model, imports a mesh, and the job the worker ran
(its job.json) carries the method's keys; its log counts the predictions each step asked the
judge for.

The runs go to one `serve` the test starts (REMOTE mode): a local worker is a fresh process
per Generate, whose engine imports and first model load cost ~15 s each on two cores, once
per method; one server pays that once. The local path carries the default method in
test_addon_e2e.py. Newest Blender only: the Method is add-on Python with no
version-specific bpy API."""
import pytest

from blender_sds import kinds
from serve_client import TOKEN

# The judge's predictions a step per method (docs/JOB.md "Guidance methods"): CFG's pair; Perp-Neg
# asks for its two negatives whenever a camera of the batch weighs them, as the two scene cameras
# (far from overhead) always do; NFSD and CSD the empty prompt beside their published negative;
# VSD its estimator's camera pass and its training pass, ESD (lambda 0.5) the camera-free pass too.
PREDICTIONS = {"sds": 2, "view-prompts": 2, "perp-neg": 4, "debiased": 2, "nfsd": 3, "csd": 3, "vsd": 4, "esd": 5}


def holds(whole: dict, part: dict) -> bool:
    """Whether `whole` has every key of `part` with its value, nested objects (ESD's estimator)
    by their own keys: a job's normalised guidance fills in the keys a method leaves out."""
    return all(isinstance(v, dict) and isinstance(whole.get(k), dict) and holds(whole[k], v)
               or k in whole and whole[k] == v for k, v in part.items())


def test_each_method_reaches_the_worker_and_imports(newest_blender, run_scenario, tiny_sd, server):
    serve_tmp, port = server
    facts = run_scenario(newest_blender, "methods", model=tiny_sd, port=port, token=TOKEN,
                         server_root=str(serve_tmp / "root"))
    print(newest_blender, facts["timings"])

    names = kinds.method_names()
    assert set(PREDICTIONS) == set(names), "a method without its expected prediction count"
    assert [item[0] for item in facts["items"]] == list(names)
    for name, label, description, _ in facts["items"]:
        spec = kinds.method(name)
        assert (label, description) == (spec.label, spec.summary)
    assert len({item[3] for item in facts["items"]}) == len(names)  # the numbers a .blend stores differ
    assert facts["default"] == facts["initial"] == kinds.DEFAULT_METHOD
    assert "Janus" in facts["property_description"]
    panel = facts["panel"]
    assert "method" in panel and panel.index("seed") < panel.index("method")

    perp_neg = kinds.method("perp-neg").guidance
    assert facts["overridden"] == {**facts["overridden"], **perp_neg, "rule": "debiased"}
    assert isinstance(facts["clash"], str) and "guidance.view_dependent" in facts["clash"], facts["clash"]
    assert "Method in the SDS panel" in facts["clash"]
    # A nested key of Job Overrides joins the Method's own (ESD's estimator), replacing none of it.
    esd = kinds.method("esd").guidance
    assert facts["nested"]["rule"] == esd["rule"]
    assert facts["nested"]["estimator"] == {**esd["estimator"], "lr": 0.002}

    assert list(facts["runs"]) == list(names)
    for name, run in facts["runs"].items():
        assert run["returned"] == ["FINISHED"], (name, run["message"])
        obj = run["object"]
        assert obj["vertices"] > 0 and obj["faces"] > 0 and obj["col"] == ["FLOAT_COLOR", "POINT"]
        assert obj["checkpoint_exists"] and obj["job_steps"] == 2
        keys = kinds.method(name).guidance
        assert holds(run["job_guidance"], keys), (name, run["job_guidance"])  # the object's job
        assert holds(run["ran_guidance"], keys), (name, run["ran_guidance"])  # the job the worker ran
        assert run["ran_guidance"]["kind"] == "stable-diffusion"
        assert run["predictions"] and set(run["predictions"]) == {PREDICTIONS[name]}, (name, run)
    assert facts["objects"] == 2 + len(names)  # two cameras + one object a method
    assert facts["torch_loaded"] is False
