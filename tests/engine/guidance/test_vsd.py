"""VSD and ESD (rules/vsd.py) with their trained estimators (guidance/estimators/), on the tiny
Stable Diffusion model (a LoRA on its UNet) and the pocket teacher (a small pixel UNet).

The gradient tests recompute w(t) (eps_pre - eps_phi) from the model's parts directly: the
pretrained UNet with the adapter off, the estimator with it on and the camera embedding
attached, pulled back through the VAE encoder by autograd, and compared with what the rule's
`loss.backward()` puts on the images, to within float32 rounding measured against a float64
copy (judges.assert_within_rounding).
"""
from __future__ import annotations

import json
import statistics
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer

from blender_sds.engine.guidance import build_guidance, build_predictor
from blender_sds.engine.guidance.estimators import camera_vector
from blender_sds.engine.guidance.estimators.lora import LoraEstimator
from blender_sds.engine.guidance.estimators.pixel import SIGMA_DATA, PixelEstimator
from blender_sds.engine.guidance.predictors import cuda_graphs, weights_cache
from blender_sds.engine.scene.directions import DIRECTIONS
from blender_sds.engine.settings import Settings
from blender_sds.engine.train.run import Run, run_job
from blender_sds.job import ESTIMATOR, JobError, validate_job
from blender_sds.kinds import pocket
from blender_sds.results import CHECKPOINT_FILE, LOG_FILE
from judges import assert_within_rounding, camera_batch

CPU = torch.device("cpu")
AZIMUTHS, ELEVATIONS = [10.0, 200.0], [5.0, 30.0]  # a front and a back camera
FRONT_BACK = [DIRECTIONS.index("front"), DIRECTIONS.index("back")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sd_job(model, **guidance) -> dict:
    return validate_job({"version": 1, "prompt": "a ceramic teapot", "seed": 3,
                         "guidance": {"kind": "stable-diffusion", "model": str(model), "rule": "vsd",
                                      "view_dependent": True, **guidance}})


def pocket_job(**guidance) -> dict:
    return validate_job({"version": 1, "prompt": "a red cube", "seed": 3, "render": {"resolution": 16},
                         "guidance": {"kind": "pocket", "rule": "vsd", **guidance}})


def views(size=32):
    """Two cameras placed on an orbit (so their c2w, the estimator's condition, differ), on solid backgrounds."""
    batch = camera_batch(AZIMUTHS, ELEVATIONS, size=size)
    c2w = batch.c2w.clone()
    for i, azimuth in enumerate(AZIMUTHS):
        angle = torch.tensor(azimuth).deg2rad()
        c2w[i, :3, 3] = torch.stack([angle.sin(), -angle.cos(), torch.tensor(0.3)]) * 1.8
    batch.c2w = c2w
    return batch.with_background(torch.tensor([[0.2, 0.4, 0.9], [1.0, 1.0, 1.0]]))


def smooth_images(seed: int, size: int = 32) -> torch.Tensor:
    """Two smooth colour fields in [0, 1], renders' kind of image (a fixed batch)."""
    coarse = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def adam(g, lr=None):
    """An Adam over the estimator's part, as the run builds it (its group's lr, the run's betas and eps)."""
    groups = g.trained_parts()[0].parameter_groups()
    if lr is not None:
        groups = [{**group, "lr": lr} for group in groups]
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


def train(g, images, batch, steps, lr=None) -> list[float]:
    """The estimator's own training steps on a fixed batch, as the rule runs them; its losses."""
    optimizer = adam(g, lr)
    with torch.no_grad():
        z = g.predictor.encode(images)
    losses = []
    for _ in range(steps):
        loss = g.estimator_loss(z, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def run_guidance(g, images, batch, step=0, total=10, **kw):
    images = images.detach().clone().requires_grad_(True)
    out = g(images, batch, step, total, **kw)
    out.loss.backward()
    return images.grad, out


@pytest.fixture(scope="module")
def sd_folder(tiny_sd_folder):
    return tiny_sd_folder


# -- which estimator, and its start ----------------------------------------------------------------

@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    from blender_sds.engine.bench.tiny_models import make_tiny_pixel
    return make_tiny_pixel(tmp_path_factory.mktemp("tiny-pixel"))


@pytest.mark.parametrize("kind", ["pocket", "pixel", "stable-diffusion"])
def test_each_kind_gets_its_estimator_started_from_the_seed(kind, sd_folder, pixel_folder):
    """Stable Diffusion: a LoRA on its UNet; pixel-space kinds: the small pixel UNet. The same seed
    starts the same estimator, whatever ran before in the process; another seed another one."""
    def build(seed):
        if kind == "pocket":
            job = pocket_job()
        elif kind == "pixel":
            job = validate_job({"version": 1, "prompt": "a teapot", "guidance": {"kind": "pixel", "rule": "vsd",
                                                                                 "model": str(pixel_folder)}})
        else:
            job = sd_job(sd_folder)
        job["seed"] = seed
        return build_guidance(job, CPU).estimator

    first = build(3)
    torch.rand(100)  # the global stream moves on: the estimator's start must not
    same, other = build(3), build(4)
    assert isinstance(first, LoraEstimator if kind == "stable-diffusion" else PixelEstimator)
    start = first.state_dict()
    assert all(torch.equal(start[k], v) for k, v in same.state_dict().items())
    assert any(not torch.equal(start[k], v) for k, v in other.state_dict().items())


def test_an_estimator_from_scratch_learns_faster_than_a_lora_by_default(sd_folder):
    """The pocket's estimator learns its network from nothing and must keep up with the renders
    (pocket ESTIMATOR_LR); a LoRA on a pretrained UNet keeps threestudio's rate. A job's own rate wins."""
    assert pocket_job()["guidance"]["estimator"]["lr"] == pocket.ESTIMATOR_LR > ESTIMATOR["lr"]
    assert sd_job(sd_folder)["guidance"]["estimator"]["lr"] == ESTIMATOR["lr"]
    mine = pocket_job(estimator={"lr": 0.002})
    assert mine["guidance"]["estimator"]["lr"] == 0.002 and validate_job(mine) == mine


def test_low_vram_offload_on_cuda_is_refused_by_name():
    """accelerate's offload streams the UNet's weights in per layer: no adapter can train inside it."""
    predictor = SimpleNamespace(device=torch.device("cuda"), low_vram=True, unet=None)
    with pytest.raises(ValueError, match=r"^guidance\.low_vram: rule 'vsd' .* set guidance\.low_vram to false"):
        LoraEstimator(predictor, rank=4, seed=0)


# -- the estimator learns -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pocket", "stable-diffusion"])
def test_the_estimator_learns_a_fixed_batch(kind, sd_folder):
    """Its diffusion loss (t uniform over [0, T), fresh noise each step) falls: the mean of the last
    k steps is below the first k's by more than three standard errors of that difference.

    The pocket's estimator trains at 1e-2 here, not its run default (ESTIMATOR_LR, 3e-2, chosen
    for keeping up with changing renders): on a fixed batch 3e-2 is too noisy to fit well (a drop
    of 0.12 over 200 steps against 0.31 at 1e-2; docs/QUALITY.md)."""
    if kind == "pocket":
        g, images, lr, steps = build_guidance(pocket_job(), CPU), smooth_images(0, 16), 1e-2, 120
    else:  # the tiny model is random: its LoRA needs a larger step to move in a few dozen steps
        g, images, lr, steps = build_guidance(sd_job(sd_folder), CPU), smooth_images(0), 1e-2, 60
    assert isinstance(g.estimator, PixelEstimator if kind == "pocket" else LoraEstimator)
    losses = train(g, images, views(images.shape[-1]), steps, lr=lr)
    k = steps // 3
    first, last = losses[:k], losses[-k:]
    spread = (statistics.variance(first) / k + statistics.variance(last) / k) ** 0.5
    assert statistics.mean(first) - statistics.mean(last) > 3 * spread, (first, last)


# -- the gradient -------------------------------------------------------------------------------

def closed_form(unet, vae, embeddings, camera_embedding, image_size, alphas, scale, images, noise, t, camera):
    """(d loss / d images, grad on z) of w(t) (eps_pre - eps_phi), from the parts themselves."""
    images = images.detach().clone().requires_grad_(True)
    x = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    z = vae.encode(x * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    a = alphas[t].view(-1, 1, 1, 1).to(z.dtype)
    z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    batch = images.shape[0]
    with torch.no_grad():
        unet.disable_adapters()
        eps_c = unet(z_t, t, encoder_hidden_states=embeddings["views"][FRONT_BACK]).sample
        eps_u = unet(z_t, t, encoder_hidden_states=embeddings["uncond"].expand(batch, -1, -1)).sample
        eps_pre = eps_u + scale * (eps_c - eps_u)
        unet.enable_adapters()
        unet.class_embedding = camera_embedding
        eps_phi = unet(z_t, t, encoder_hidden_states=embeddings["prompt"].expand(batch, -1, -1),
                       class_labels=camera.to(z.dtype)).sample
        unet.class_embedding = None
        unet.disable_adapters()
        grad_z = (1 - a) * (eps_pre - eps_phi)
    grad_images, = torch.autograd.grad(z, images, grad_outputs=grad_z / batch)
    return grad_images, grad_z


def parts_of(g, dtype):
    e = g.predictor.embeddings
    unet, vae, camera = g.predictor.unet, g.predictor.vae, g.estimator.camera
    if dtype == torch.float64:
        unet, vae, camera = deepcopy(unet).double(), deepcopy(vae).double(), deepcopy(camera).double()
    embeddings = {"prompt": e.prompt.to(dtype), "uncond": e.uncond.to(dtype), "views": e.views.to(dtype)}
    return unet, vae, embeddings, camera, g.predictor.image_size, g.alphas_cumprod.to(dtype), g.scale


def test_vsd_gradient_is_w_times_pretrained_minus_estimated_noise(sd_folder):
    g = build_guidance(sd_job(sd_folder), CPU)
    batch = views()
    train(g, smooth_images(1), batch, 3, lr=1e-2)  # a LoRA that has moved: eps_phi is not the start's
    assert any(float(p.detach().abs().max()) > 0 for name, p in g.estimator.named().items() if "lora_B" in name)
    rng = torch.Generator().manual_seed(2)
    images, noise = torch.rand(2, 3, 32, 32, generator=rng), torch.randn(2, 4, 16, 16, generator=rng)
    t = torch.tensor([150, 700])
    state = {k: v.clone() for k, v in g.estimator.state_dict().items()}
    grad, out = run_guidance(g, images, batch, noise=noise, t=t)
    for name, tensor in g.estimator.state_dict().items():  # frozen: the call trains nothing by itself
        assert torch.equal(tensor, state[name]), name
    camera = camera_vector(batch, g.bounds)
    expected, grad_z = closed_form(*parts_of(g, torch.float32), images, noise, t, camera)
    exact, _ = closed_form(*parts_of(g, torch.float64), images.double(), noise.double(), t, camera.double())
    assert_within_rounding(grad, exact, expected)
    assert float(out.figures["grad_norm"]) == pytest.approx(float(grad_z.norm()), rel=1e-4)
    assert float(out.figures["predictions"]) == 4  # CFG's pair, the estimator, its training pass


@pytest.mark.parametrize("kind", ["pocket", "stable-diffusion"])
@pytest.mark.parametrize("camera_scale", [1.0, 0.5])
def test_vsd_with_the_true_noise_for_its_estimate_is_sds(kind, camera_scale, sd_folder):
    """An estimator that knew the noise exactly gives SDS back, at the same scale and conditions."""
    def job(rule):
        extra = {"estimator": {"camera_scale": camera_scale}} if rule == "vsd" else {}
        return (sd_job(sd_folder, rule=rule, scale=7.5, **extra) if kind == "stable-diffusion"
                else pocket_job(rule=rule, scale=7.5, **extra))

    vsd, sds = build_guidance(job("vsd"), CPU), build_guidance(job("sds"), CPU)
    size, channels = (32, 4) if kind == "stable-diffusion" else (16, 3)
    side = 16
    rng = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, size, size, generator=rng)
    noise, t = torch.randn(2, channels, side, side, generator=rng), torch.tensor([300, 800])
    vsd.estimator.predict = lambda z_t, t, camera, base=None: noise.repeat(z_t.shape[0] // noise.shape[0], 1, 1, 1)
    batch = views(size)
    got, _ = run_guidance(vsd, images, batch, noise=noise, t=t)
    want, _ = run_guidance(sds, images, batch, noise=noise, t=t)
    assert torch.equal(got, want)


def test_the_pixel_estimator_starts_as_the_judge_where_the_noise_is_large():
    """Anchored on the teacher: untrained (F's last layer zero) its eps is (1 - c_skip(t)) times the
    judge's prompt eps at the same sample, so VSD's first gradient is w(t)(eps_pre - that): near
    eps_pre - eps_prompt at large t, near SDS's eps_pre at small t (the render passes through)."""
    rng = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 16, 16, generator=rng)
    noise, t = torch.randn(2, 3, 16, 16, generator=rng), torch.tensor([50, 900])
    batch = views(16)
    g = build_guidance(pocket_job(scale=7.5), CPU)
    assert g.estimator.anchored
    got, _ = run_guidance(g, images, batch, noise=noise, t=t)
    a = g.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        z = images * 2 - 1
        eps = g.predictor.predict(a.sqrt() * z + (1 - a).sqrt() * noise, t, batch, ("prompt", "uncond"))
    c_skip = SIGMA_DATA ** 2 / ((1 - a) / a + SIGMA_DATA ** 2)  # EDM's, at sigma^2 = (1 - a) / a
    eps_pre = eps["uncond"] + 7.5 * (eps["prompt"] - eps["uncond"])
    want = 2 * (1 - a) * (eps_pre - (1 - c_skip) * eps["prompt"]) / 2  # d loss / d images = 2 grad_z / B
    floor = 64 * torch.finfo(torch.float32).eps * float(want.abs().max() + 1)
    torch.testing.assert_close(got, want, rtol=0, atol=floor)
    assert float(c_skip[1]) < 0.01 and float(c_skip[0]) > 0.8  # t 900: the judge; t 50: mostly the render


def test_the_anchored_estimator_trains_at_the_gradients_own_sample():
    """The pixel estimator's training pass reuses the gradient's t and noise and the judge's prompt
    eps that CFG asked for, so it costs no judge pass of its own; the camera is still dropped at
    random, and the next step draws afresh."""
    rng = torch.Generator().manual_seed(6)
    images = torch.rand(2, 3, 16, 16, generator=rng)
    noise, t = torch.randn(2, 3, 16, 16, generator=rng), torch.tensor([120, 870])
    batch = views(16)
    g = build_guidance(pocket_job(scale=7.5), CPU)
    trained, asked = [], []
    loss, predict = g.estimator.loss, g.predictor.predict
    g.estimator.loss = lambda *args: trained.append(args) or loss(*args)

    def judge(z_t, t_in, views_in, names):
        asked.append((z_t, t_in, predict(z_t, t_in, views_in, names)))
        return asked[-1][2]

    g.predictor.predict = judge
    run_guidance(g, images, batch, noise=noise, t=t)
    assert len(asked) == 1  # CFG's one call; none for the training sample
    z, t_trained, noise_trained, camera, base = trained[0]
    assert torch.equal(t_trained, t) and torch.equal(noise_trained, noise)
    assert torch.equal(z, images * 2 - 1)
    a = g.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t, t_judged, judged = asked[0]
    assert torch.equal(t_judged, t) and torch.equal(z_t, a.sqrt() * z + (1 - a).sqrt() * noise)
    assert torch.equal(base, judged["prompt"])
    assert g.anchor is None  # used once: a call without a gradient of its own would draw afresh
    for dropout, dropped in ((0.0, False), (1.0, True)):  # the camera condition: kept, or dropped
        g.camera_dropout = dropout
        run_guidance(g, images, batch, noise=noise, t=t)
        camera = trained[-1][3]
        assert bool((camera == 0).all()) == dropped and bool((camera != 0).any(dim=1).all()) != dropped


def test_the_shape_phase_judges_by_sds_and_the_estimator_waits():
    """Before optim.shape_steps VSD's gradient is SDS's at the same scale (its estimator neither
    asked nor trained); from shape_steps on it is w(t)(eps_pre - eps_phi), and the estimator trains."""
    rng = torch.Generator().manual_seed(7)
    images = torch.rand(2, 3, 16, 16, generator=rng)
    noise, t = torch.randn(2, 3, 16, 16, generator=rng), torch.tensor([300, 700])
    batch = views(16)
    job = validate_job({"version": 1, "prompt": "a red cube", "seed": 3, "render": {"resolution": 16},
                        "optim": {"shape_steps": 5}, "guidance": {"kind": "pocket", "rule": "vsd", "scale": 7.5}})
    want, _ = run_guidance(build_guidance(pocket_job(rule="sds", scale=7.5), CPU), images, batch, noise=noise, t=t)
    g = build_guidance(job, CPU)
    asked = []
    g.estimator.predict = lambda z_t, t_in, camera, base=None: asked.append(t_in) or noise + 0.25
    got, out = run_guidance(g, images, batch, step=4, noise=noise, t=t)
    assert asked == [] and float(out.figures["predictions"]) == 2  # CFG's pair alone
    assert "estimator_loss" not in out.figures
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got, out = run_guidance(g, images, batch, step=5, noise=noise, t=t)
    assert len(asked) == 1 and float(out.figures["predictions"]) == 4  # + its pass and the training pass
    assert torch.isfinite(out.figures["estimator_loss"])
    a = g.alphas_cumprod[t].view(-1, 1, 1, 1)
    floor = 8 * torch.finfo(torch.float32).eps * float(want.abs().max() + 1)
    torch.testing.assert_close(got, want - 2 * (1 - a) * 0.25 / 2, rtol=0, atol=floor)


def test_after_the_shape_phase_the_density_keeps_sds_and_the_colour_takes_vsd():
    """guidance.estimator.density_scale: from shape_steps on, the render's density image gets SDS's
    gradient at that scale and its colour image VSD's, from the same CFG pair (no judge pass more);
    before shape_steps nothing is split, and a split step without the split images is refused."""
    rng = torch.Generator().manual_seed(8)
    images = torch.rand(2, 3, 16, 16, generator=rng)
    noise, t = torch.randn(2, 3, 16, 16, generator=rng), torch.tensor([250, 750])
    batch = views(16)
    job = validate_job({"version": 1, "prompt": "a red cube", "seed": 3, "render": {"resolution": 16},
                        "optim": {"shape_steps": 5},
                        "guidance": {"kind": "pocket", "rule": "vsd", "scale": 1.5, "estimator": {"density_scale": 20}}})
    g = build_guidance(job, CPU)
    g.estimator.predict = lambda z_t, t_in, camera, base=None: noise + 0.25
    assert not g.splits(4) and g.splits(5)
    density, colour = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    out = g(images, batch, 5, 10, noise=noise, t=t, split=(density, colour))
    out.loss.backward()
    sds_at = {scale: run_guidance(build_guidance(pocket_job(rule="sds", scale=scale), CPU), images, batch,
                                  noise=noise, t=t)[0] for scale in (1.5, 20.0)}
    a = g.alphas_cumprod[t].view(-1, 1, 1, 1)
    floor = 8 * torch.finfo(torch.float32).eps * float(sds_at[1.5].abs().max() + 1)
    torch.testing.assert_close(density.grad, sds_at[20.0], rtol=0, atol=0)
    torch.testing.assert_close(colour.grad, sds_at[1.5] - 2 * (1 - a) * 0.25 / 2, rtol=0, atol=floor)
    assert float(out.figures["predictions"]) == 4 and torch.isfinite(out.figures["estimator_loss"])
    with pytest.raises(ValueError, match="guidance.estimator.density_scale"):
        g(images, batch, 5, 10, noise=noise, t=t)
    got, _ = run_guidance(g, images, batch, step=4, noise=noise, t=t)  # the shape phase: SDS at 1.5, whole
    torch.testing.assert_close(got, sds_at[1.5], rtol=0, atol=0)


def test_a_split_step_on_stable_diffusion_pulls_each_half_back_through_the_encoder(sd_folder):
    """Latent kinds encode each half apart: with the estimator knowing the true noise and
    density_scale at the rule's own scale, both halves' gradients are SDS's exactly."""
    vsd = build_guidance(sd_job(sd_folder, scale=7.5, estimator={"density_scale": 7.5}), CPU)
    sds = build_guidance(sd_job(sd_folder, rule="sds", scale=7.5), CPU)
    rng = torch.Generator().manual_seed(9)
    images = torch.rand(2, 3, 32, 32, generator=rng)
    noise, t = torch.randn(2, 4, 16, 16, generator=rng), torch.tensor([300, 800])
    vsd.estimator.predict = lambda z_t, t, camera, base=None: noise
    batch = views()
    density, colour = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    vsd(images, batch, 0, 10, noise=noise, t=t, split=(density, colour)).loss.backward()
    want, _ = run_guidance(sds, images, batch, noise=noise, t=t)
    assert torch.equal(density.grad, want) and torch.equal(colour.grad, want)


def test_the_density_scale_defaults_to_the_shape_phases_cfg_where_there_is_one():
    ramped = validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket", "rule": "vsd"}})
    assert ramped["guidance"]["estimator"]["density_scale"] == ramped["guidance"]["scale"][1] == 20.0
    assert validate_job(ramped) == ramped
    assert pocket_job(scale=7.5)["guidance"]["estimator"]["density_scale"] is None  # no shape phase
    off = validate_job({"version": 1, "prompt": "a red cube",
                        "guidance": {"kind": "pocket", "rule": "vsd", "estimator": {"density_scale": None}}})
    assert off["guidance"]["estimator"]["density_scale"] is None and off["optim"]["shape_steps"] > 0
    for bad, words in (("loud", "got 'loud'"), (0.5, ">= 1")):
        with pytest.raises(JobError, match=f"guidance.estimator.density_scale: must be a number .*{words}"):
            pocket_job(estimator={"density_scale": bad})


def test_esd_asks_the_camera_free_estimate_too_and_mixes_them_by_lambda(sd_folder):
    """camera_scale 0.5: eps_phi = free + 0.5 (camera - free), both passes in one batch. With the
    estimator answering noise + c with the camera and noise + d without, the gradient is SDS's
    minus w(t)(d + 0.5 (c - d)) exactly, and VSD's (lambda 1) SDS's minus w(t) c."""
    rng = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 16, 16, generator=rng)
    noise, t = torch.randn(2, 3, 16, 16, generator=rng), torch.tensor([250, 600])
    c, d = torch.full((1, 3, 1, 1), 0.3), torch.full((1, 3, 1, 1), -0.7)
    batch = views(16)
    want, _ = run_guidance(build_guidance(pocket_job(rule="sds", scale=7.5), CPU), images, batch, noise=noise, t=t)
    # 0.5 mixes symmetrically; 0.25 also tells which pass is the camera's
    for camera_scale, mixed in ((0.5, d + 0.5 * (c - d)), (0.25, d + 0.25 * (c - d)), (1.0, c)):
        g = build_guidance(pocket_job(scale=7.5, estimator={"camera_scale": camera_scale}), CPU)
        asked = []

        def predict(z_t, t_in, camera, base=None):
            asked.append(camera.clone())
            assert base is not None and base.shape == z_t.shape  # the pocket's estimator is anchored
            with_camera = camera.abs().sum(1) > 0
            return noise.repeat(z_t.shape[0] // 2, 1, 1, 1) + torch.where(with_camera.view(-1, 1, 1, 1), c, d)

        g.estimator.predict = predict
        a = g.alphas_cumprod[t].view(-1, 1, 1, 1)
        got, out = run_guidance(g, images, batch, noise=noise, t=t)
        camera = camera_vector(batch, g.bounds)
        if camera_scale < 1:
            assert len(asked) == 1 and torch.equal(asked[0], torch.cat([camera, torch.zeros_like(camera)]))
            # CFG's pair, two estimator passes, training (at the gradient's sample: no judge pass)
            assert float(out.figures["predictions"]) == 5
        else:
            assert len(asked) == 1 and torch.equal(asked[0], camera)
            assert float(out.figures["predictions"]) == 4
        # pocket samples are images * 2 - 1 at their own size: d loss / d images = 2 grad_z / B
        expected = want - 2 * (1 - a) * mixed / 2
        floor = 8 * torch.finfo(torch.float32).eps * float(want.abs().max() + 1)
        torch.testing.assert_close(got, expected.expand_as(got), rtol=0, atol=floor)


def test_a_v_prediction_unet_estimates_noise_and_trains_on_v(sd_folder, tmp_path):
    """The estimator is the judge's UNet: a v-model's output is read as noise for the gradient
    (eps = sqrt(a) v + sqrt(1-a) x_t) and trained against v = sqrt(a) eps - sqrt(1-a) z."""
    import shutil
    folder = tmp_path / "v-model"
    shutil.copytree(sd_folder, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "prediction_type": "v_prediction"}))
    g = build_guidance(sd_job(folder), CPU)
    batch = views()
    train(g, smooth_images(8), batch, 2, lr=1e-2)
    rng = torch.Generator().manual_seed(9)
    z, noise = torch.randn(2, 4, 16, 16, generator=rng), torch.randn(2, 4, 16, 16, generator=rng)
    t = torch.tensor([100, 800])
    camera = camera_vector(batch, g.bounds)
    a = g.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    with torch.no_grad():
        v = g.estimator.forward(z_t, t, camera)
        torch.testing.assert_close(g.estimator.predict(z_t, t, camera), a.sqrt() * v + (1 - a).sqrt() * z_t)
        torch.testing.assert_close(g.estimator.loss(z, t, noise, camera),
                                   F.mse_loss(v, a.sqrt() * noise - (1 - a).sqrt() * z))


# -- one UNet: the adapter is the estimator's only ------------------------------------------------

def test_the_pretrained_pass_never_sees_the_adapter(sd_folder):
    g = build_guidance(sd_job(sd_folder), CPU)
    batch = views()
    train(g, smooth_images(5), batch, 4, lr=1e-2)
    fresh = build_predictor(Settings.from_job(sd_job(sd_folder, rule="sds")).guidance, CPU)
    rng = torch.Generator().manual_seed(6)
    z_t, t = torch.randn(2, 4, 16, 16, generator=rng), torch.tensor([200, 900])
    asked = ("prompt", "uncond")
    with torch.no_grad():
        ours, theirs = g.predictor.predict(z_t, t, batch, asked), fresh.predict(z_t, t, batch, asked)
        estimate = g.estimator.predict(z_t, t, camera_vector(batch, g.bounds))
        plain = fresh.unet(z_t, t, encoder_hidden_states=fresh.embeddings.prompt.expand(2, -1, -1)).sample
    for name in asked:
        assert torch.equal(ours[name], theirs[name]), name
    assert (estimate - plain).abs().max() > 1e-3  # the adapter, on, does change the UNet's answer
    assert g.predictor.unet.class_embedding is None
    lora = [p for name, p in g.estimator.named().items() if name.startswith("lora.")]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)


def test_a_kept_unet_comes_back_without_the_last_jobs_adapter(sd_folder):
    """The batch worker keeps one UNet for job after job (weights_cache): a VSD job's LoRA must not
    reach the next job, which gets the UNet as it was loaded."""
    weights_cache.enable()
    try:
        unet = build_guidance(sd_job(sd_folder, rule="sds"), CPU).predictor.unet
        loaded = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
        hits = weights_cache.stats()["hits"]
        vsd = build_guidance(sd_job(sd_folder), CPU)
        assert vsd.predictor.unet is unet and any(isinstance(m, BaseTunerLayer) for m in unet.modules())
        train(vsd, smooth_images(7), views(), 2, lr=1e-2)
        after = build_guidance(sd_job(sd_folder, rule="sds"), CPU).predictor.unet
        assert after is unet and weights_cache.stats()["hits"] == hits + 2
        assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
        state = unet.state_dict()
        assert state.keys() == loaded.keys() and all(torch.equal(state[k], v) for k, v in loaded.items())
        again = build_guidance(sd_job(sd_folder), CPU)  # a second VSD job adds its own adapter afresh
        assert again.predictor.unet is unet and again.estimator.named().keys() == vsd.estimator.named().keys()
    finally:
        weights_cache.enable(False)


def test_cuda_graphs_leave_a_vsd_judge_eager(sd_folder, monkeypatch):
    """The graphs would replay one capture; VSD switches its adapter and camera embedding per pass."""
    monkeypatch.setattr(cuda_graphs, "usable", lambda device, low_vram: True)
    sds = build_predictor(Settings.from_job(sd_job(sd_folder, rule="sds")).guidance, CPU)
    vsd = build_predictor(Settings.from_job(sd_job(sd_folder)).guidance, CPU)
    assert isinstance(sds.unet, cuda_graphs.GraphedUNet)
    assert not isinstance(vsd.unet, cuda_graphs.GraphedUNet)


# -- a run: the log, the checkpoint, refine and resume ------------------------------------------

RUN = {"preset": "draft", "steps": 12, "render": {"resolution": 16, "samples": 16}, "mesh": {"resolution": 16},
       "output": {"preview_every": 0, "checkpoint_every": 0, "progress_every": 4}}


def run_job_for(kind, sd_folder, **extra) -> dict:
    if kind == "pocket":
        guidance = {"kind": "pocket", "rule": "vsd"}
        raw = {"version": 1, "prompt": "a red cube", "seed": 5, **RUN}
    else:
        guidance = {"kind": "stable-diffusion", "model": str(sd_folder), "rule": "vsd"}
        raw = {"version": 1, "prompt": "a ceramic teapot", "seed": 5, **RUN, "steps": 6,
               "render": {"resolution": 32, "samples": 16}}
    return validate_job({**raw, "guidance": {**guidance, "estimator": {"lr": 1e-2}}, **extra})


@pytest.mark.parametrize("kind", ["pocket", "stable-diffusion"])
def test_a_vsd_run_logs_its_estimator_and_refine_and_resume_continue_it(kind, sd_folder, tmp_path):
    job = run_job_for(kind, sd_folder)
    first = run_job(job, tmp_path / "first", device="cpu")
    progress = [json.loads(line) for line in (first / LOG_FILE).read_text().splitlines()]
    progress = [e for e in progress if e["type"] == "progress"]
    # The estimator learns from the colour phase on (the pocket's default has a shape phase first).
    shape_steps = job["optim"]["shape_steps"]
    learning = [e for e in progress if e["step"] > shape_steps]
    assert learning and all(e["figures"]["estimator_loss"] > 0 for e in learning)
    assert all("estimator_loss" not in e["figures"] for e in progress if e["step"] <= shape_steps)
    saved = torch.load(first / CHECKPOINT_FILE, weights_only=True)
    start = build_guidance(job, CPU).estimator.state_dict()  # the estimator before any step
    assert saved["estimator"].keys() == start.keys()
    assert any(not torch.equal(saved["estimator"][k], start[k]) for k in start)  # it trained

    refine = Run(run_job_for(kind, sd_folder, init={"checkpoint": str(first / CHECKPOINT_FILE)}),
                 tmp_path / "refine", CPU)
    restored = refine.guidance.estimator.state_dict()
    assert restored.keys() == saved["estimator"].keys()
    for name, tensor in saved["estimator"].items():
        assert torch.equal(restored[name], tensor), name
    assert refine.step == 0

    if kind == "stable-diffusion":  # a LoRA of another rank is refused by the key that sets it
        other = run_job_for(kind, sd_folder, init={"checkpoint": str(first / CHECKPOINT_FILE)})
        other["guidance"]["estimator"]["rank"] = 8
        with pytest.raises(ValueError, match=r"estimator.*guidance\.estimator\.rank"):
            Run(other, tmp_path / "other", CPU)

    steps = job["steps"]
    resume = Run(run_job_for(kind, sd_folder, steps=steps + 2,
                             init={"checkpoint": str(first / CHECKPOINT_FILE), "resume": True}),
                 tmp_path / "resume", CPU)
    assert resume.step == steps
    params = resume.guidance.estimator.parameters()
    moments = [resume.optimizer.state[p]["exp_avg"] for p in params if p in resume.optimizer.state]
    assert moments and any(float(m.abs().max()) > 0 for m in moments)  # Adam's moments came back with it
    for name, tensor in saved["estimator"].items():
        assert torch.equal(resume.guidance.estimator.state_dict()[name], tensor), name
