"""Pixel-space (IF-like) guidance on a tiny model built from configs: loading, the exact
gradient, learned-variance output, CLIP and T5 text encoders, and a short optimisation."""
from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, T5EncoderModel

from blender_sds.engine.guidance import build_guidance
from blender_sds.engine.guidance.predictors.model_source import ModelSourceError
from blender_sds.engine.guidance.predictors.pixel import PixelPredictor
from blender_sds.job import validate_job
from blender_sds.engine.bench.tiny_models import make_tiny_pixel, make_tiny_sd, make_tiny_sd_single_file
from judges import assert_within_rounding, camera_batch, cfg_pair, guidance_settings

CPU = torch.device("cpu")
PROMPT = "a red cube"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory) -> Path:
    return make_tiny_pixel(tmp_path_factory.mktemp("tiny-pixel"))


def pixel_job(model, **guidance) -> dict:
    return validate_job({"version": 1, "prompt": PROMPT, "seed": 7,
                         "guidance": {"kind": "pixel", "model": str(model), **guidance}})


def test_loads_the_folder_and_keeps_the_noise_half_of_a_learned_variance_unet(pixel_folder):
    g = build_guidance(pixel_job(pixel_folder), CPU)
    assert isinstance(g.predictor, PixelPredictor)
    assert g.predictor.unet.config.out_channels == 6 and g.predictor.image_size == (32, 32)
    assert not any(p.requires_grad for p in g.predictor.unet.parameters())
    assert g.predictor.embeddings.views.shape == (4, 77, 32)
    z_t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 800])
    eps_cond, eps_uncond = cfg_pair(g.predictor, z_t, t, camera_batch([0.0, 180.0]))
    assert eps_cond.shape == eps_uncond.shape == (2, 3, 32, 32)
    with torch.no_grad():
        raw = g.predictor.unet(z_t, t, encoder_hidden_states=g.predictor.embeddings.uncond.expand(2, -1, -1)).sample
    torch.testing.assert_close(eps_uncond, raw[:, :3], rtol=1e-4, atol=1e-5)


def closed_form(unet, embeddings, alphas_cumprod, scale, images, noise, t):
    """d loss / d images of fantasia3d-weighted SDS with a pixel model, from its parts directly."""
    x = images.clone().requires_grad_(True)
    z = x * 2 - 1
    a = alphas_cumprod[t].view(-1, 1, 1, 1).to(z.dtype)
    z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    with torch.no_grad():
        eps_c = unet(z_t, t, encoder_hidden_states=embeddings.prompt.expand(2, -1, -1).to(z.dtype)).sample[:, :3]
        eps_u = unet(z_t, t, encoder_hidden_states=embeddings.uncond.expand(2, -1, -1).to(z.dtype)).sample[:, :3]
        grad_z = a.sqrt() * (1 - a) * (eps_u + scale * (eps_c - eps_u) - noise)
    expected, = torch.autograd.grad(z, x, grad_outputs=grad_z / 2)
    return expected


def test_backward_puts_the_closed_form_gradient_on_the_images(pixel_folder):
    g = build_guidance(pixel_job(pixel_folder, view_dependent=False, weighting="fantasia3d"), CPU)
    rng = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 32, 32, generator=rng)
    noise = torch.randn(2, 3, 32, 32, generator=rng)
    t = torch.tensor([250, 750])
    rendered = images.clone().requires_grad_(True)
    g(rendered, camera_batch([0.0, 90.0]), 0, 10, noise=noise, t=t).loss.backward()

    m = g.predictor
    float32 = closed_form(m.unet, m.embeddings, m.scheduler.alphas_cumprod, g.scale, images, noise, t)
    exact = closed_form(deepcopy(m.unet).double(), m.embeddings, m.scheduler.alphas_cumprod.double(), g.scale,
                        images.double(), noise.double(), t)
    assert_within_rounding(rendered.grad, exact, float32)


def test_five_adam_steps_on_a_free_image_run_with_finite_gradients(pixel_folder):
    g = build_guidance(pixel_job(pixel_folder, t_schedule="anneal", grad_clip=1.0), CPU)
    logits = torch.zeros(2, 3, 32, 32, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    views = camera_batch([0.0, 120.0])
    for step in range(5):
        optimiser.zero_grad()
        out = g(torch.sigmoid(logits), views, step, 5)
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().max() > 0
        assert all(torch.isfinite(v) for v in out.figures.values())
        optimiser.step()
    assert logits.abs().max() > 0.1  # five steps of lr 0.05 moved the image


def test_a_t5_text_encoder_is_loaded_and_given_the_attention_mask(tmp_path):
    folder = make_tiny_pixel(tmp_path / "t5-pixel", text_encoder="t5")
    g = PixelPredictor(guidance_settings(pixel_job(folder, view_dependent=False)), CPU)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    encoder = T5EncoderModel.from_pretrained(folder / "text_encoder").eval()
    tokens = tokenizer([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        masked = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        unmasked = encoder(tokens.input_ids)[0]
    assert not torch.allclose(masked, unmasked)
    torch.testing.assert_close(g.embeddings.prompt, masked)


def test_latent_models_and_single_files_are_refused(tmp_path):
    sd_folder = make_tiny_sd(tmp_path / "sd")
    job = pixel_job(sd_folder)
    with pytest.raises(ModelSourceError,
                       match=r"^guidance\.model: the UNet .* maps 4 to 4 channels; .*stable-diffusion"):
        PixelPredictor(guidance_settings(job), CPU)
    job["guidance"]["model"] = str(make_tiny_sd_single_file(tmp_path / "sd.safetensors", sd_folder))
    with pytest.raises(ModelSourceError, match=r"^guidance\.model: .*sd\.safetensors.* single-file"):
        PixelPredictor(guidance_settings(job), CPU)
    (tmp_path / "empty").mkdir()
    job["guidance"]["model"] = str(tmp_path / "empty")
    with pytest.raises(ModelSourceError, match=r"empty.* not a pixel-space diffusers model: missing unet/config\.json"):
        PixelPredictor(guidance_settings(job), CPU)
