"""One short pocket job end to end: the real engine, the pocket teacher, and the yardstick reading the result."""
import numpy as np
import pytest
import torch

from blender_sds.engine.pocket import metrics
from blender_sds.engine.train.run import run_job
from blender_sds.job import validate_job

# A pyramid: the camera-blind teacher returns a cone for it, the default (pose-matched) one a pyramid.
PROMPT = "a blue pyramid"


@pytest.fixture
def one_thread():
    # The engine's small per-step ops only spin with more threads on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_short_pocket_job_comes_back_recognisable(tmp_path, one_thread):
    job = validate_job({
        "version": 1, "prompt": PROMPT, "seed": 0,  # the default preset, as a user gets it
        "guidance": {"kind": "pocket"},
        "output": {"preview_every": 0, "checkpoint_every": 0, "progress_every": 100},
    })
    out = run_job(job, tmp_path / "out", device="cpu")
    with np.load(out / "mesh.npz") as data:
        mesh = {k: data[k] for k in data.files}
    judged = metrics.judge(mesh, PROMPT, job["bounds"])
    assert (judged["seen_shape"], judged["seen_colour"]) == ("pyramid", "blue"), judged
    assert judged["chamfer"] < 0.08, judged
    # Not just any blue thing: the pyramid ranks clearly before every other shape, the cone included.
    ranks = metrics.rank_prompts(mesh, job["bounds"])
    by_shape = {}
    for prompt, score in zip(ranks["prompts"], ranks["shape_score"]):
        by_shape[prompt.split()[-1]] = score
    runner_up = min(v for k, v in by_shape.items() if k != "pyramid")
    assert by_shape["pyramid"] < 0.85 * runner_up, by_shape
