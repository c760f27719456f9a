"""guidance.cuda_graphs off CUDA: the option is accepted and changes nothing, and the graph
wrappers hand any call they cannot replay (CPU tensors, no gradient) to the eager module
unchanged. Whether the replays equal eager PyTorch on a GPU is checked where one is lent:
`bench speed` reports `cuda_graphs_check` (scripts/gpu_check.sh, docs/PERFORMANCE.md)."""
from __future__ import annotations

import pytest
import torch

from blender_sds.engine.guidance import build_guidance
from blender_sds.engine.guidance.predictors.cuda_graphs import GraphedEncoder, GraphedUNet, active, usable
from blender_sds.job import JobError, validate_job
from blender_sds.engine.bench.tiny_models import make_tiny_sd


def sd_job(model, **guidance) -> dict:
    return validate_job({"version": 1, "prompt": "a ceramic teapot",
                         "guidance": {"kind": "stable-diffusion", "model": str(model), **guidance}})


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


def test_the_job_key_defaults_on_and_refuses_a_non_bool(sd_folder):
    assert sd_job(sd_folder)["guidance"]["cuda_graphs"] is True
    assert sd_job(sd_folder, cuda_graphs=False)["guidance"]["cuda_graphs"] is False
    with pytest.raises(JobError, match="guidance.cuda_graphs"):
        sd_job(sd_folder, cuda_graphs="yes")


def test_graphs_are_for_cuda_without_offload_only():
    assert usable(torch.device("cuda"), low_vram=False)
    assert not usable(torch.device("cuda"), low_vram=True)
    assert not usable(torch.device("cpu"), low_vram=False) and not usable(torch.device("mps"), low_vram=False)


def test_on_the_cpu_the_judge_stays_eager_and_the_wrappers_pass_calls_through(sd_folder):
    torch.manual_seed(0)
    g = build_guidance(sd_job(sd_folder), torch.device("cpu"))
    assert not isinstance(g.predictor.unet, GraphedUNet) and not active(g.predictor)

    wrapped = GraphedUNet(g.predictor.unet)
    z, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 900])
    hidden = torch.cat([g.predictor.embeddings.prompt, g.predictor.embeddings.uncond])
    with torch.no_grad():
        want = g.predictor.unet(z, t, encoder_hidden_states=hidden).sample
        got = wrapped(z, t, encoder_hidden_states=hidden).sample
    assert torch.equal(got, want) and wrapped.graph is None  # nothing captured on the CPU
    assert wrapped.config is g.predictor.unet.config and active(type("G", (), {"unet": wrapped})())

    encoder = GraphedEncoder(g.predictor.vae.encoder.forward)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    assert torch.equal(encoder(x), g.predictor.vae.encoder(x)) and encoder.graphed is None
