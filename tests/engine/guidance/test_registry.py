"""The extension points are real: a new judge kind and a new rule, added through the registry
alone, run a job end to end, and the rule's own trained part is optimised and checkpointed."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blender_sds import kinds
from blender_sds.engine.guidance.predictor import NoisePredictor
from blender_sds.engine.guidance.rules.base import ScoreDistillation
from blender_sds.engine.guidance.teachers.closed_form import epsilon, scaled_linear_alphas_cumprod
from blender_sds.engine.train import artifacts
from blender_sds.engine.train.parts import TrainedPart
from blender_sds.engine.train.run import run_job
from blender_sds.job import JobError, validate_job

CALLS = {"predict": 0, "combine": 0}
GREEN = torch.tensor([0.1, 0.8, 0.2])


class GreenPredictor(NoisePredictor):
    """Believes every image is flat green: eps for x0 = green, whatever the condition."""

    def __init__(self, settings, device):
        super().__init__(settings, scaled_linear_alphas_cumprod(), device)
        self.resolution = settings.resolution

    def encode(self, images):
        return F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear") * 2 - 1

    def predict(self, z_t, t, views, names):
        CALLS["predict"] += 1
        x0 = (GREEN.to(z_t) * 2 - 1).view(1, 3, 1, 1).expand_as(z_t)
        return {name: epsilon(z_t, x0, self.alphas_cumprod[t]) for name in names}


class Pull(TrainedPart):
    """A rule's own parameter, pulled towards 1: stands in for VSD's LoRA."""

    name = "pull"

    def __init__(self):
        self.value = torch.nn.Parameter(torch.zeros(()))

    def parameter_groups(self):
        return [{"params": [self.value], "lr": 0.05}]

    def losses(self, rendered):
        return {"pull": (self.value - 1) ** 2}

    def state_dict(self):
        return {"value": self.value.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.value.copy_(state["value"])


class PromptOnly(ScoreDistillation):
    conditions = ("prompt",)

    def __init__(self, settings, predictor):
        super().__init__(settings, predictor)
        self.pull = Pull()

    def trained_parts(self):
        return [self.pull]

    def combine(self, predictions, views):
        CALLS["combine"] += 1
        return predictions["prompt"]


@pytest.fixture
def registered():
    kinds.register_kind(kinds.KindSpec(name="green", predictor=f"{__name__}:GreenPredictor", scale=1.0,
                                       text=False, model="none", opaque=3.0))
    kinds.register_rule(kinds.RuleSpec(name="prompt-only", rule=f"{__name__}:PromptOnly"))
    CALLS.update(predict=0, combine=0)
    yield
    kinds.unregister("green")
    kinds.unregister("prompt-only")


def green_job(**extra) -> dict:
    return validate_job({"version": 1, "seed": 3, "steps": 12, "preset": "draft",
                         "guidance": {"kind": "green", "rule": "prompt-only"},
                         "render": {"resolution": 16, "samples": 16}, "mesh": {"resolution": 24},
                         "optim": {"albedo_steps": 12},
                         "output": {"preview_every": 0, "checkpoint_every": 0, "progress_every": 4}, **extra})


def test_a_kind_and_a_rule_from_the_registry_alone_run_a_job_end_to_end(registered, tmp_path):
    job = green_job()
    # job.py took the new kind's defaults from the registry: its scale, its opacity weight, no prompt
    assert job["guidance"]["scale"] == 1.0 and job["optim"]["opaque"] == 3.0 and job["prompt"] == ""
    assert job["optim"]["sparsity"] == 1.0 and job["guidance"]["view_dependent"] is False
    out = run_job(job, tmp_path / "out", device="cpu")
    assert CALLS == {"predict": 12, "combine": 12}  # every step judged by the new pair
    with np.load(out / "mesh.npz") as mesh:
        assert len(mesh["faces"]) > 0
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "done"

    # The rule's own part trained with the field and went into the checkpoint under its name.
    state = artifacts.load_checkpoint(out / "checkpoint.pt")
    pulled = float(state["pull"]["value"])
    assert 0.2 < pulled < 1.0, pulled
    assert {"field", "background", "pull", "optimizer"} <= set(state)

    # Resume restores it and goes on: more steps pull it closer to 1.
    more = green_job(steps=20, init={"checkpoint": str(out / "checkpoint.pt"), "resume": True})
    again = run_job(more, tmp_path / "again", device="cpu")
    assert CALLS["predict"] == 12 + 8
    assert pulled < float(artifacts.load_checkpoint(again / "checkpoint.pt")["pull"]["value"]) < 1.0


def test_unknown_kinds_and_rules_are_named_with_what_the_registry_has(registered):
    with pytest.raises(JobError) as error:
        validate_job({"version": 1, "guidance": {"kind": "green", "rule": "ism"}})
    assert error.value.key == "guidance.rule" and "prompt-only" in error.value.problem and "sds" in error.value.problem
    with pytest.raises(JobError) as error:
        validate_job({"version": 1, "guidance": {"kind": "blue"}})
    assert error.value.key == "guidance.kind" and "green" in error.value.problem
    with pytest.raises(JobError, match="guidance.model: not used by guidance kind 'green'"):
        validate_job({"version": 1, "guidance": {"kind": "green", "model": "org/name"}})
