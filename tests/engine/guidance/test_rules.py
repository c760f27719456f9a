"""The Janus remedies as rules on the tiny Stable Diffusion: each gradient against its closed form.

The closed form is written out here from the papers' formulas (threestudio's Perp-Neg:
interpolated positive embedding, two negatives per camera, perpendicular components) with
separate UNet calls in float64, and pulled back through the VAE encoder by autograd.
"""
from __future__ import annotations

import math
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from blender_sds.engine.guidance import build_guidance
from blender_sds.engine.guidance.rules.debiased import CLAMP
from blender_sds.engine.guidance.rules.perp_neg import plan
from blender_sds.engine.scene.directions import DIRECTIONS
from blender_sds.job import PERP_NEG_WEIGHTS, JobError, validate_job
from judges import assert_within_rounding, camera_batch

CPU = torch.device("cpu")
SIDE, FRONT, BACK, OVERHEAD = (DIRECTIONS.index(d) for d in ("side", "front", "back", "overhead"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def job(model, **guidance) -> dict:
    return validate_job({"version": 1, "prompt": "a ceramic teapot", "negative_prompt": "blurry",
                         "render": {"resolution": 32},
                         "guidance": {"kind": "stable-diffusion", "model": str(model), **guidance}})


def decay(triple, r):
    a, b, c = triple
    return a * math.exp(-b * r) + c


def expected_plan(azimuth, elevation, f=PERP_NEG_WEIGHTS):
    """threestudio's get_text_embeddings_perp_neg, one camera at a time."""
    az = abs((azimuth + 180) % 360 - 180)
    if elevation > 60:
        return {OVERHEAD: 1.0}, [OVERHEAD, OVERHEAD], [0.0, 0.0]
    if az < 90:
        r = 1 - az / 90
        return {FRONT: r, SIDE: 1 - r}, [FRONT, SIDE], [-decay(f["f_fs"], r), -decay(f["f_sf"], 1 - r)]
    r = 2 - az / 90
    return {SIDE: r, BACK: 1 - r}, [SIDE, FRONT], [-decay(f["f_sb"], r), -decay(f["f_fsb"], r)]


def test_the_plan_is_threestudios_camera_by_camera():
    azimuths, elevations = [0.0, 30.0, -60.0, 90.0, 120.0, 180.0, -150.0, 45.0], [0, 10, 5, 20, 0, 30, 10, 70]
    positive, negatives, w = plan(torch.tensor(azimuths), torch.tensor([float(e) for e in elevations]),
                                  PERP_NEG_WEIGHTS)
    for i, (az, el) in enumerate(zip(azimuths, elevations)):
        mix, neg, weights = expected_plan(az, el)
        want = torch.zeros(len(DIRECTIONS))
        for d, value in mix.items():
            want[d] += value
        torch.testing.assert_close(positive[i], want)
        assert [int(n[i].argmax()) for n in negatives] == neg
        torch.testing.assert_close(w[i], torch.tensor(weights), rtol=1e-5, atol=1e-6)
    # The worked values of threestudio's table: front, side and back views.
    _, _, w = plan(torch.tensor([0.0, 90.0, 180.0]), torch.zeros(3), PERP_NEG_WEIGHTS)
    torch.testing.assert_close(w, torch.tensor([[0.0, -1.574], [-0.0005, -1.574], [-0.394, -1.967]]),
                               atol=2e-3, rtol=0)


def perpendicular(x, y):
    dims = tuple(range(1, x.dim()))
    return x - (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp_min(1e-6) * y


def closed_form(parts, scale, images, noise, t, cams):
    """d loss / d images for Perp-Neg, from separate UNet calls on the given parts (float32 or float64)."""
    images = images.detach().clone().requires_grad_(True)
    x = F.interpolate(images, size=parts.image_size, mode="bilinear", align_corners=False)
    z = parts.vae.encode(x * 2 - 1).latent_dist.mean * parts.vae.config.scaling_factor
    a = parts.alphas_cumprod[t].view(-1, 1, 1, 1).to(z.dtype)
    z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    rows = []
    with torch.no_grad():
        for i, (az, el) in enumerate(cams):
            mix, neg, weights = expected_plan(az, el)
            emb = sum(value * parts.views[d] for d, value in mix.items())[None]

            def unet(hidden):
                return parts.unet(z_t[i:i + 1], t[i:i + 1], encoder_hidden_states=hidden).sample

            eps_u = unet(parts.uncond)
            e_pos = unet(emb) - eps_u
            pushed = sum(wk * perpendicular(unet(parts.views[n][None]) - eps_u, e_pos) for wk, n in zip(weights, neg))
            eps = eps_u + scale * (e_pos + pushed)
            rows.append((1 - a[i:i + 1]) * (eps - noise[i:i + 1]))
    grad_z = torch.cat(rows)
    grad, = torch.autograd.grad(z, images, grad_outputs=grad_z / len(cams))
    return grad


def parts_of(g, dtype):
    p, e = g.predictor, g.predictor.embeddings
    return SimpleNamespace(unet=deepcopy(p.unet).to(dtype), vae=deepcopy(p.vae).to(dtype), image_size=p.image_size,
                           alphas_cumprod=g.alphas_cumprod.to(dtype), views=e.views.to(dtype),
                           uncond=e.uncond.to(dtype))


def run(g, images, cams, noise, t):
    images = images.detach().clone().requires_grad_(True)
    az, el = zip(*cams)
    g(images, camera_batch(list(az), list(el)), 0, 10, noise=noise, t=t).loss.backward()
    return images.grad


def test_perp_neg_gradient_is_its_closed_form(tiny_sd_folder):
    g = build_guidance(job(tiny_sd_folder, rule="perp-neg"), CPU)
    cams = [(20.0, 10.0), (-75.0, 0.0), (130.0, 20.0), (170.0, 5.0), (40.0, 80.0)]
    rng = torch.Generator().manual_seed(3)
    images, noise = torch.rand(5, 3, 32, 32, generator=rng), torch.randn(5, 4, 16, 16, generator=rng)
    t = torch.tensor([100, 400, 600, 800, 300])
    actual = run(g, images, cams, noise, t)
    exact = closed_form(parts_of(g, torch.float64), g.scale, images.double(), noise.double(), t, cams)
    assert_within_rounding(actual, exact, closed_form(parts_of(g, torch.float32), g.scale, images, noise, t, cams))
    # The negatives matter: the same step under plain view-dependent SDS differs by far more than rounding.
    plain = run(build_guidance(job(tiny_sd_folder), CPU), images, cams, noise, t)
    assert (plain - actual).abs().max() > 100 * (actual.double() - exact).abs().max()


def test_perp_neg_with_zero_negative_weights_is_plain_sds(tiny_sd_folder):
    zero = {name: [0.0, 0.5, 0.0] for name in PERP_NEG_WEIGHTS}
    perp = build_guidance(job(tiny_sd_folder, rule="perp-neg", perp_neg=zero), CPU)
    sds = build_guidance(job(tiny_sd_folder), CPU)
    # Cameras where the interpolated positive is exactly one direction prompt, as SDS's is.
    cams = [(0.0, 10.0), (90.0, 0.0), (180.0, 20.0), (-90.0, 5.0), (10.0, 75.0)]
    rng = torch.Generator().manual_seed(4)
    images, noise = torch.rand(5, 3, 32, 32, generator=rng), torch.randn(5, 4, 16, 16, generator=rng)
    t = torch.tensor([100, 400, 600, 800, 300])
    torch.testing.assert_close(run(perp, images, cams, noise, t), run(sds, images, cams, noise, t), rtol=0, atol=0)


def test_debiased_clamp_rises_over_the_run_unless_grad_clip_says(tiny_sd_folder):
    g = build_guidance(job(tiny_sd_folder, rule="debiased"), CPU)
    assert g.clip_at(0, 101) == CLAMP[0] and g.clip_at(100, 101) == CLAMP[1]
    assert g.clip_at(50, 101) == pytest.approx((CLAMP[0] + CLAMP[1]) / 2)
    given = build_guidance(job(tiny_sd_folder, rule="debiased", grad_clip=0.3), CPU)
    assert given.clip_at(0, 101) == given.clip_at(100, 101) == 0.3
    rng = torch.Generator().manual_seed(5)
    images, noise = torch.rand(2, 3, 32, 32, generator=rng), torch.randn(2, 4, 16, 16, generator=rng)
    t = torch.tensor([900, 950])
    cams = camera_batch([0.0, 180.0], [10.0, 10.0])
    grads = []
    for step in (0, 100):
        x = images.clone().requires_grad_(True)
        out = g(x, cams, step, 101, noise=noise, t=t)
        grads.append(out.figures["grad_norm"])
    assert grads[0] < grads[1]  # the same judgement, clamped harder at the start


@pytest.mark.parametrize("guidance, key", [
    ({"rule": "perp-neg", "view_dependent": False}, "guidance.view_dependent"),
    ({"perp_neg": {"f_fs": [1, 2, 3]}}, "guidance.perp_neg"),
    ({"rule": "perp-neg", "perp_neg": {"f_xx": [1, 2, 3]}}, "guidance.perp_neg.f_xx"),
    ({"rule": "perp-neg", "perp_neg": {"f_fs": [1, 2]}}, "guidance.perp_neg.f_fs"),
    ({"front_bias": 0.7}, "guidance.front_bias"),
])
def test_rule_keys_are_refused_where_they_mean_nothing(tiny_sd_folder, guidance, key):
    with pytest.raises(JobError) as caught:
        job(tiny_sd_folder, **guidance)
    assert caught.value.key == key


def test_perp_neg_needs_a_prompted_kind_and_front_bias_a_camera_blind_pocket():
    with pytest.raises(JobError) as caught:
        validate_job({"version": 1, "guidance": {"kind": "pocket", "rule": "perp-neg", "view_dependent": False},
                      "prompt": "a red cube"})
    assert caught.value.key == "guidance.view_dependent"
    with pytest.raises(JobError) as caught:
        validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket", "front_bias": 0.9}})
    assert caught.value.key == "guidance.front_bias" and "pose_matched" in caught.value.problem
    blind = validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket", "pose_matched": False}})
    assert blind["guidance"]["front_bias"] == 0.8 and validate_job(blind) == blind
    matched = validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket", "rule": "perp-neg"}})
    assert matched["guidance"]["front_bias"] is None and validate_job(matched) == matched
    assert matched["guidance"]["perp_neg"] == PERP_NEG_WEIGHTS


def test_a_scale_ramp_judges_each_step_at_its_own_scale(tiny_sd_folder):
    """guidance.scale [start_step, start, end, end_step]: step k's gradient is the fixed-scale rule's
    at the ramp's value for k (every rule reads the scale the base sets per step; NFSD through its
    own residual)."""
    ramp = [10, 20.0, 4.0, 30]
    rng = torch.Generator().manual_seed(7)
    images, noise = torch.rand(1, 3, 32, 32, generator=rng), torch.randn(1, 4, 16, 16, generator=rng)
    t, cams = torch.tensor([600]), camera_batch([30.0], [10.0])
    for rule in ("nfsd",):
        ramped = build_guidance(job(tiny_sd_folder, rule=rule, scale=ramp), CPU)
        for step, value in ((0, 20.0), (20, 12.0), (40, 4.0)):
            fixed = build_guidance(job(tiny_sd_folder, rule=rule, scale=value), CPU)
            got = ramped.gradient(ramped.predictor.encode(images), cams, step, 50, noise=noise, t=t)[0]
            want = fixed.gradient(fixed.predictor.encode(images), cams, step, 50, noise=noise, t=t)[0]
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            assert ramped.scale == value


@pytest.mark.parametrize("scale, problem", [
    ([10, 20.0, 4.0], "start_step"), ([30, 20.0, 4.0, 10], "start_step"), ([0, 2000.0, 4.0, 10], "<= 1000"),
    ([0, -1.0, 4.0, 10], "> 0"), ("high", "a number > 0"), (0, "> 0"),
])
def test_a_bad_scale_or_ramp_is_refused_by_name(tiny_sd_folder, scale, problem):
    with pytest.raises(JobError) as caught:
        job(tiny_sd_folder, scale=scale)
    assert caught.value.key == "guidance.scale" and problem in caught.value.problem, caught.value.problem
