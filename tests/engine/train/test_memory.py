"""The first step's memory, estimated before it is asked for."""
import pytest
import torch

from blender_sds.engine.train import memory


def job(resolution: int, batch: int, samples: int) -> dict:
    return {"render": {"resolution": resolution, "batch": batch, "samples": samples}}


def test_a_render_past_the_whole_memory_is_refused_naming_the_keys():
    have = memory.device_memory(torch.device("cpu"))
    assert have is not None and have > 2**30
    points = have // memory.BYTES_PER_POINT + 1
    samples = 2048
    batch = 64
    resolution = int((points / (batch * samples)) ** 0.5) + 1
    with pytest.raises(ValueError) as info:
        memory.check_render_fits(job(resolution, batch, samples), torch.device("cpu"))
    message = str(info.value)
    assert message.startswith(f"render: {resolution}^2 px x batch 64 x 2048 samples needs about ")
    assert "lower render.resolution, render.batch or render.samples" in message and len(message) <= 300
    memory.check_render_fits(job(64, 1, 96), torch.device("cpu"))  # the draft preset fits anywhere
