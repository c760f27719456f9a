"""Latent Stable Diffusion guidance on a tiny SD built from configs: loading, and the exact gradient.

The gradient tests recompute the SDS gradient in closed form, w(t) (CFG eps - noise),
with separate direct UNet calls and pull it back through the VAE encoder by autograd;
the guidance's `loss.backward()` must put exactly that on the rendered images.
"""
from __future__ import annotations

import gc
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from blender_sds.engine.guidance import build_guidance, build_predictor
from blender_sds.engine.guidance.predictors.model_source import ModelSourceError
from blender_sds.engine.guidance.rules.debiased import CLAMP
from blender_sds.engine.guidance.predictors.prompts import view_prompts
from blender_sds.engine.scene.directions import DIRECTIONS
from blender_sds.engine.guidance.predictors.stable_diffusion import StableDiffusionPredictor
from blender_sds.engine.bench.tiny_models import make_tiny_sd, make_tiny_sd_single_file
from blender_sds.job import validate_job
from judges import assert_within_rounding, camera_batch, cfg_pair, guidance_settings

CPU = torch.device("cpu")
PROMPT = "a ceramic teapot"
REPO = Path(__file__).resolve().parents[3]
# front, side, back, overhead: one camera per direction (DIRECTIONS order is side, front, back, overhead)
AZIMUTHS, ELEVATIONS = [10.0, 90.0, 200.0, 30.0], [0.0, 20.0, 5.0, 75.0]
EXPECTED = [DIRECTIONS.index(d) for d in ("front", "side", "back", "overhead")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


def sd_job(model, prompt=PROMPT, **guidance) -> dict:
    return validate_job({"version": 1, "prompt": prompt, "seed": 3,
                         "guidance": {"kind": "stable-diffusion", "model": str(model), **guidance}})


def weight_of(kind: str, a: torch.Tensor) -> torch.Tensor:
    return {"sds": 1 - a, "uniform": torch.ones_like(a), "fantasia3d": a.sqrt() * (1 - a)}[kind]


def closed_form(g, images, noise, t, cond_index, *, weighting="sds", clip=None):
    """(d loss / d images, the z-space gradient) recomputed from the model's parts directly."""
    images = images.detach().clone().requires_grad_(True)
    x = F.interpolate(images, size=g.predictor.image_size, mode="bilinear", align_corners=False)
    z = g.predictor.vae.encode(x * 2 - 1).latent_dist.mean * g.predictor.vae.config.scaling_factor
    a = g.predictor.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    batch = images.shape[0]
    with torch.no_grad():
        cond = g.predictor.embeddings.prompt.expand(batch, -1, -1) if cond_index is None else g.predictor.embeddings.views[cond_index]
        eps_c = g.predictor.unet(z_t, t, encoder_hidden_states=cond).sample
        eps_u = g.predictor.unet(z_t, t, encoder_hidden_states=g.predictor.embeddings.uncond.expand(batch, -1, -1)).sample
        eps = eps_u + g.scale * (eps_c - eps_u)
        grad_z = weight_of(weighting, a) * (eps - noise)
        if clip is not None:
            grad_z = grad_z.clamp(-clip, clip)
    grad_images, = torch.autograd.grad(z, images, grad_outputs=grad_z / batch)
    return grad_images, grad_z


def run_guidance(g, images, views, step, total, **kw):
    images = images.detach().clone().requires_grad_(True)
    out = g(images, views, step, total, **kw)
    out.loss.backward()
    return images.grad, out


def in_float64(g):
    """The guidance's frozen parts upcast to float64, for closed_form: the exact reference."""
    from copy import deepcopy
    from types import SimpleNamespace

    e = g.predictor.embeddings
    views = None if e.views is None else e.views.double()
    model = SimpleNamespace(unet=deepcopy(g.predictor.unet).double(), vae=deepcopy(g.predictor.vae).double(),
                            scheduler=g.predictor.scheduler, image_size=g.predictor.image_size,
                            embeddings=SimpleNamespace(prompt=e.prompt.double(), uncond=e.uncond.double(), views=views))
    return SimpleNamespace(predictor=model, scale=g.scale)


def assert_gradient_is_the_closed_form(actual, g, images, noise, t, cond_index, **kw):
    """`actual` is the closed form, to within float32 rounding measured on this CPU (judges.py)."""
    exact = closed_form(in_float64(g), images.double(), noise.double(), t, cond_index, **kw)[0]
    assert_within_rounding(actual, exact, closed_form(g, images, noise, t, cond_index, **kw)[0])


# -- loading ----------------------------------------------------------------------------------

def test_loads_a_diffusers_folder_frozen_and_fp32_on_cpu(sd_folder):
    g = build_guidance(sd_job(sd_folder, view_dependent=False), CPU)
    assert isinstance(g.predictor, StableDiffusionPredictor)
    assert g.predictor.unet.dtype == torch.float32 and g.predictor.vae.dtype == torch.float32
    assert not any(p.requires_grad for p in list(g.predictor.unet.parameters()) + list(g.predictor.vae.parameters()))
    assert g.predictor.image_size == (32, 32)  # UNet sample_size 16 x VAE factor 2
    assert g.predictor.embeddings.views is None and g.predictor.embeddings.prompt.shape == (1, 77, 32)
    reference = StableDiffusionPipeline.from_pretrained(sd_folder)
    torch.testing.assert_close(g.alphas_cumprod, reference.scheduler.alphas_cumprod, rtol=0, atol=0)
    for name, tensor in reference.unet.state_dict().items():
        assert torch.equal(g.predictor.unet.state_dict()[name], tensor), name


def test_single_file_checkpoint_loads_the_same_weights(sd_folder, tmp_path):
    # The config folder comes from a different seed: every weight must come from the file.
    config_folder = make_tiny_sd(tmp_path / "other-seed", seed=1)
    checkpoint = make_tiny_sd_single_file(tmp_path / "tiny-sd.safetensors", sd_folder)
    original = StableDiffusionPipeline.from_pretrained(sd_folder)
    other = StableDiffusionPipeline.from_pretrained(config_folder)
    assert not torch.equal(original.unet.conv_in.weight, other.unet.conv_in.weight)

    roundtrip = StableDiffusionPipeline.from_single_file(str(checkpoint), config=str(config_folder))
    for part in ("unet", "vae", "text_encoder"):
        want, got = getattr(original, part).state_dict(), getattr(roundtrip, part).state_dict()
        assert set(want) == set(got), part
        for name in want:
            assert torch.equal(want[name], got[name]), f"{part}.{name}"

    from_file = build_predictor(guidance_settings(sd_job(checkpoint, config=str(config_folder))), CPU)
    from_folder = build_predictor(guidance_settings(sd_job(sd_folder)), CPU)
    for name, tensor in original.unet.state_dict().items():
        assert torch.equal(from_file.unet.state_dict()[name], tensor), name
    for name, tensor in original.vae.state_dict().items():
        assert torch.equal(from_file.vae.state_dict()[name], tensor), name
    for field in ("prompt", "uncond", "views"):  # the text encoder came through the file too
        assert torch.equal(getattr(from_file.embeddings, field), getattr(from_folder.embeddings, field)), field


OFFLINE_SCRIPT = """
import json, sys
from blender_sds.engine.guidance.predictors.stable_diffusion import StableDiffusionPredictor
from blender_sds.engine.guidance.predictors.model_source import ModelSourceError
from blender_sds.engine.guidance.rules.debiased import CLAMP
from blender_sds.engine.settings import Settings
from blender_sds.job import validate_job
messages = []
for guidance in json.loads(sys.argv[1]):
    job = validate_job({"version": 1, "prompt": "a teapot", "guidance": guidance})
    try:
        StableDiffusionPredictor(Settings.from_job(job).guidance, "cpu")
        messages.append("loaded")
    except ModelSourceError as error:
        messages.append(str(error))
print(json.dumps(messages))
"""


def test_offline_hub_id_and_single_file_without_config_say_what_to_do(tmp_path, sd_folder):
    checkpoint = make_tiny_sd_single_file(tmp_path / "model.safetensors", sd_folder)
    base = {"kind": "stable-diffusion", "scale": 100, "t_range": [0.02, 0.98], "view_dependent": True}
    cases = [{**base, "model": "stabilityai/stable-diffusion-2-1-base"}, {**base, "model": str(checkpoint)}]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, json.dumps(cases)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    hub, single = json.loads(done.stdout.strip().splitlines()[-1])
    assert hub.startswith("guidance.model:") and "stabilityai/stable-diffusion-2-1-base" in hub
    assert "HF_HUB_OFFLINE" in hub and "network" in hub and "local diffusers folder" in hub and "single-file" in hub
    assert single.startswith("guidance.model:") and "model.safetensors" in single
    assert "guidance.config" in single and "network" in single


def test_a_folder_or_file_that_is_not_a_model_is_refused(sd_folder, tmp_path):
    job = sd_job(sd_folder)
    empty = tmp_path / "just-some-folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a model")
    job["guidance"]["model"] = str(empty)
    with pytest.raises(ModelSourceError, match=r"^guidance\.model: .*just-some-folder.* not a diffusers Stable "
                                               r"Diffusion folder: missing model_index\.json, unet/config\.json"):
        StableDiffusionPredictor(guidance_settings(job), CPU)

    no_unet = tmp_path / "no-unet"
    shutil.copytree(sd_folder, no_unet)
    shutil.rmtree(no_unet / "unet")
    job["guidance"]["model"] = str(no_unet)
    with pytest.raises(ModelSourceError, match=r"no-unet.*missing unet/config\.json$"):
        StableDiffusionPredictor(guidance_settings(job), CPU)

    not_sd = tmp_path / "weights.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(not_sd))
    job["guidance"]["model"] = str(not_sd)
    with pytest.raises(ModelSourceError, match=r"^guidance\.model: .*weights\.safetensors.* not a Stable Diffusion "
                                               r"checkpoint"):
        StableDiffusionPredictor(guidance_settings(job), CPU)

    job["guidance"]["model"] = str(tmp_path / "missing" / "model")
    with pytest.raises(ModelSourceError, match=r"^guidance\.model: no such file or folder"):
        StableDiffusionPredictor(guidance_settings(job), CPU)


def test_text_encoder_is_freed_after_construction(sd_folder):
    def alive():
        gc.collect()
        return sum(issubclass(type(o), CLIPTextModel) for o in gc.get_objects())

    before = alive()
    g = StableDiffusionPredictor(guidance_settings(sd_job(sd_folder)), CPU)
    assert alive() == before
    assert not hasattr(g, "text_encoder") and not hasattr(g, "tokenizer")
    assert g.embeddings.views.shape == (4, 77, 32)


# -- prompts ----------------------------------------------------------------------------------

def test_view_dependent_prompts_pick_the_camera_direction(sd_folder):
    job = sd_job(sd_folder, view_dependent=True)
    job["negative_prompt"] = "blurry"
    g = StableDiffusionPredictor(guidance_settings(job), CPU)
    tokenizer = CLIPTokenizer.from_pretrained(sd_folder / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(sd_folder / "text_encoder").eval()

    def encode(texts):
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder(ids)[0]

    torch.testing.assert_close(g.embeddings.views, encode(view_prompts(PROMPT)))
    torch.testing.assert_close(g.embeddings.prompt, encode([PROMPT]))
    torch.testing.assert_close(g.embeddings.uncond, encode(["blurry"]))
    assert all(not torch.allclose(g.embeddings.views[i], g.embeddings.views[j]) for i in range(4) for j in range(i))

    views = camera_batch(AZIMUTHS, ELEVATIONS)
    z_t = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500, 500, 500])
    eps_cond, eps_uncond = cfg_pair(g, z_t, t, views)
    with torch.no_grad():
        for i, direction in enumerate(EXPECTED):
            want = g.unet(z_t[i:i + 1], t[i:i + 1], encoder_hidden_states=g.embeddings.views[direction:direction + 1])
            torch.testing.assert_close(eps_cond[i:i + 1], want.sample, rtol=1e-4, atol=1e-5)
        want = g.unet(z_t, t, encoder_hidden_states=g.embeddings.uncond.expand(4, -1, -1)).sample
        torch.testing.assert_close(eps_uncond, want, rtol=1e-4, atol=1e-5)


# -- the gradient -----------------------------------------------------------------------------

def test_backward_puts_the_closed_form_sds_gradient_on_the_images(sd_folder):
    g = build_guidance(sd_job(sd_folder), CPU)
    rng = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 40, 40, generator=rng)  # resized to the VAE's 32x32 inside
    noise = torch.randn(4, 4, 16, 16, generator=rng)
    t = torch.tensor([50, 300, 600, 950])
    views = camera_batch(AZIMUTHS, ELEVATIONS)

    grad, out = run_guidance(g, images, views, 0, 100, noise=noise, t=t)
    expected, grad_z = closed_form(g, images, noise, t, EXPECTED)
    assert_gradient_is_the_closed_form(grad, g, images, noise, t, EXPECTED)
    assert float(out.figures["t"]) == pytest.approx(float(t.float().mean()))
    assert float(out.figures["grad_norm"]) == pytest.approx(float(grad_z.norm()), rel=1e-4)
    assert all(p.grad is None for p in g.predictor.unet.parameters()) and all(p.grad is None for p in g.predictor.vae.parameters())

    # The same images judged as if every camera saw them from the front: a different gradient.
    front, _ = closed_form(g, images, noise, t, [DIRECTIONS.index("front")] * 4)
    assert not torch.allclose(front, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("weighting", ["uniform", "fantasia3d"])
def test_weighting_variants(sd_folder, weighting):
    g = build_guidance(sd_job(sd_folder, weighting=weighting, view_dependent=False), CPU)
    rng = torch.Generator().manual_seed(2)
    images, noise = torch.rand(2, 3, 32, 32, generator=rng), torch.randn(2, 4, 16, 16, generator=rng)
    t = torch.tensor([200, 700])
    grad, _ = run_guidance(g, images, camera_batch([0.0, 90.0], [0.0, 0.0]), 0, 10, noise=noise, t=t)
    assert_gradient_is_the_closed_form(grad, g, images, noise, t, None, weighting=weighting)


def test_annealed_timesteps_follow_the_schedule(sd_folder):
    g = build_guidance(sd_job(sd_folder, t_schedule="anneal", t_range=[0.1, 0.9], view_dependent=False), CPU)
    rng = torch.Generator().manual_seed(3)
    images, noise = torch.rand(2, 3, 32, 32, generator=rng), torch.randn(2, 4, 16, 16, generator=rng)
    views = camera_batch([0.0, 90.0], [0.0, 0.0])
    total = 11
    for step in (0, 5, 10):
        want_t = round(900 - (900 - 100) * math.sqrt(step / (total - 1)))
        grad, out = run_guidance(g, images, views, step, total, noise=noise)
        assert float(out.figures["t"]) == want_t
        assert_gradient_is_the_closed_form(grad, g, images, noise, torch.tensor([want_t] * 2), None)


# Rule debiased (Debiased SDS) is SDS whose clamp ramps over the whole run when grad_clip is left out.
@pytest.mark.parametrize("rule, grad_clip, clips", [
    ("sds", [0, 0.05, 2.0, 10], ((0, 0.05), (5, 1.025), (20, 2.0))),
    ("debiased", None, ((0, CLAMP[0]), (5, CLAMP[0] + (CLAMP[1] - CLAMP[0]) * 5 / 9), (20, CLAMP[1]))),
])
def test_gradient_clip_schedule_bounds_the_gradient(sd_folder, rule, grad_clip, clips):
    g = build_guidance(sd_job(sd_folder, rule=rule, grad_clip=grad_clip, view_dependent=False), CPU)
    rng = torch.Generator().manual_seed(4)
    images, noise = torch.rand(2, 3, 32, 32, generator=rng), torch.randn(2, 4, 16, 16, generator=rng)
    t = torch.tensor([400, 800])
    views = camera_batch([0.0, 90.0], [0.0, 0.0])
    captured = {}
    encode = g.predictor.encode
    g.predictor.encode = lambda images: captured.setdefault("z", encode(images))  # keep z to read d loss / d z
    g64 = in_float64(g)
    for step, clip in clips:
        captured.clear()
        images_in = images.clone().requires_grad_(True)
        out = g(images_in, views, step, 10, noise=noise, t=t)
        grad_z, = torch.autograd.grad(out.loss, captured["z"], retain_graph=True)
        out.loss.backward()
        expected_images, clipped = closed_form(g, images, noise, t, None, clip=clip)
        exact_images, exact_clipped = closed_form(g64, images.double(), noise.double(), t, None, clip=clip)
        free_images, unclipped = closed_form(g, images, noise, t, None)
        assert unclipped.abs().max() > 2 * clip  # the clip is active at this step
        assert (grad_z * 2).abs().max() <= clip * (1 + 1e-6)
        # Clamping is 1-Lipschitz: it cannot widen the rounding of what it clamps.
        assert_within_rounding(grad_z * 2, exact_clipped, clipped)
        assert_within_rounding(images_in.grad, exact_images, expected_images)
        assert not torch.allclose(images_in.grad, free_images, rtol=1e-2)


def test_v_prediction_models_are_read_as_noise(sd_folder, tmp_path):
    folder = tmp_path / "v-model"
    shutil.copytree(sd_folder, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    g = build_guidance(sd_job(folder, view_dependent=False), CPU)
    z_t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([100, 900])
    eps_cond, _ = cfg_pair(g.predictor, z_t, t, camera_batch([0.0, 0.0], [0.0, 0.0]))
    with torch.no_grad():
        v = g.predictor.unet(z_t, t, encoder_hidden_states=g.predictor.embeddings.prompt.expand(2, -1, -1)).sample
    a = g.predictor.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(eps_cond, a.sqrt() * v + (1 - a).sqrt() * z_t, rtol=1e-4, atol=1e-5)


def test_low_vram_and_explicit_float32_run_on_the_cpu(sd_folder):
    g = build_guidance(sd_job(sd_folder, low_vram=True, dtype="float32", view_dependent=False), CPU)
    assert g.predictor.unet.dtype == torch.float32
    rng = torch.Generator().manual_seed(6)
    images, noise = torch.rand(1, 3, 32, 32, generator=rng), torch.randn(1, 4, 16, 16, generator=rng)
    t = torch.tensor([500])
    grad, _ = run_guidance(g, images, camera_batch([0.0], [0.0]), 0, 10, noise=noise, t=t)
    assert_gradient_is_the_closed_form(grad, g, images, noise, t, None)
