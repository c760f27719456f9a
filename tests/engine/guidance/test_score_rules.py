"""The over-saturation remedies as rules of the one SDS path (issue 13): NFSD and CSD.

On the tiny Stable Diffusion each gradient is checked against its closed form, written out
here from the papers' formulas with separate UNet calls on the cached embeddings (prompt, "",
the negative) in float64 and pulled back through the VAE encoder by autograd. Then the job's
defaults (the published negatives, normal CFG), and the pocket teacher's "null" condition and
style negatives, down to a short pocket run of each rule through run_job.
"""
from __future__ import annotations

import colorsys
import json
import math
from copy import deepcopy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTextModel, CLIPTokenizer

from blender_sds.engine.guidance import build_guidance
from blender_sds.engine.guidance.rules.csd import ANNEAL_SHARE, CSD
from blender_sds.engine.guidance.rules.nfsd import DOMAIN_T
from blender_sds.engine.guidance.teachers.pocket import PocketPredictor
from blender_sds.engine.pocket import dataset, styles, world
from blender_sds.engine.train.run import run_job
from blender_sds.job import JobError, validate_job
from blender_sds.kinds.builtin import CSD_NEGATIVE, NFSD_NEGATIVE
from blender_sds.pocket_words import STYLES
from judges import assert_within_rounding, camera_batch, guidance_settings
from pocket_views import SIZE, brute_force_eps, composites, tiny_job, views_for

CPU = torch.device("cpu")
PROMPT = "a ceramic teapot"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sd_job(model, negative_prompt=None, **guidance) -> dict:
    raw = {"version": 1, "prompt": PROMPT, "render": {"resolution": 32},
           "guidance": {"kind": "stable-diffusion", "model": str(model), "view_dependent": False, **guidance}}
    if negative_prompt is not None:
        raw["negative_prompt"] = negative_prompt
    return validate_job(raw)


# -- the closed forms ---------------------------------------------------------------------------

def parts_of(g, dtype):
    p, e = g.predictor, g.predictor.embeddings
    return SimpleNamespace(unet=deepcopy(p.unet).to(dtype), vae=deepcopy(p.vae).to(dtype), image_size=p.image_size,
                           alphas_cumprod=g.alphas_cumprod.to(dtype), prompt=e.prompt.to(dtype),
                           null=e.null.to(dtype), negative=e.uncond.to(dtype))


def predictions(parts, images, noise, t):
    """(z, {prompt, null, negative: eps}, alpha_bar) from separate UNet calls, z differentiable in images."""
    x = F.interpolate(images, size=parts.image_size, mode="bilinear", align_corners=False)
    z = parts.vae.encode(x * 2 - 1).latent_dist.mean * parts.vae.config.scaling_factor
    a = parts.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise
    b = images.shape[0]
    with torch.no_grad():
        eps = {name: parts.unet(z_t, t, encoder_hidden_states=getattr(parts, name).expand(b, -1, -1)).sample
               for name in ("prompt", "null", "negative")}
    return z, eps, a


def pulled_back(z, images, grad_z):
    """d loss / d images for the injected z-gradient (the loss is 0.5 |z - sg(z - grad)|^2 / B)."""
    grad, = torch.autograd.grad(z, images, grad_outputs=grad_z / images.shape[0])
    return grad


def nfsd_closed_form(parts, scale, images, noise, t, switch=DOMAIN_T):
    """Katzir et al.: w(t) [delta_D + s (eps_y - eps_0)], delta_D = eps_0 below t = 200, else eps_0 - eps_neg."""
    images = images.detach().clone().requires_grad_(True)
    z, eps, a = predictions(parts, images, noise, t)
    grad_z = torch.empty_like(z)
    for i in range(len(t)):
        e = {k: v[i] for k, v in eps.items()}
        domain = e["null"] if int(t[i]) < switch else e["null"] - e["negative"]
        grad_z[i] = (1 - a[i]) * (domain + scale * (e["prompt"] - e["null"]))
    return pulled_back(z, images, grad_z)


def csd_closed_form(parts, scale, images, noise, t, beta):
    """Yu et al.: s [eps_y - (1 - beta) eps_0 - beta eps_neg], uniform w, divided by the batch's L2 norm / sqrt(B)."""
    images = images.detach().clone().requires_grad_(True)
    z, eps, _ = predictions(parts, images, noise, t)
    grad_z = scale * (eps["prompt"] - (1 - beta) * eps["null"] - beta * eps["negative"])
    grad_z = grad_z * math.sqrt(len(t)) / (grad_z.norm() + 1e-8)
    return pulled_back(z, images, grad_z)


def run(g, images, views, step, total, noise, t):
    images = images.detach().clone().requires_grad_(True)
    out = g(images, views, step, total, noise=noise, t=t)
    out.loss.backward()
    return images.grad, out


def fixed_inputs(seed, batch):
    rng = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 32, 32, generator=rng), torch.randn(batch, 4, 16, 16, generator=rng)


def test_the_cached_embeddings_are_the_prompt_the_empty_prompt_and_the_negative(tiny_sd_folder):
    g = build_guidance(sd_job(tiny_sd_folder, rule="nfsd"), CPU)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_folder / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_sd_folder / "text_encoder").eval()

    def encode(text):
        ids = tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return encoder(ids)[0]

    e = g.predictor.embeddings
    torch.testing.assert_close(e.uncond, encode(NFSD_NEGATIVE))
    torch.testing.assert_close(e.null, encode(""))
    assert not torch.allclose(e.null, e.uncond)
    # Without a negative (plain SDS) the empty prompt is CFG's other branch: one tensor for both.
    plain = build_guidance(sd_job(tiny_sd_folder), CPU).predictor.embeddings
    assert torch.equal(plain.null, plain.uncond)
    torch.testing.assert_close(plain.null, encode(""))


def test_nfsd_gradient_is_its_closed_form_on_both_sides_of_t_200(tiny_sd_folder):
    g = build_guidance(sd_job(tiny_sd_folder, rule="nfsd"), CPU)
    assert g.scale == 7.5 and g.settings.weighting == "sds" and g.domain_t == DOMAIN_T  # a 1000-step model
    images, noise = fixed_inputs(1, 4)
    t = torch.tensor([50, 199, 200, 800])
    views = camera_batch([0.0, 90.0, 180.0, 270.0])
    actual, out = run(g, images, views, 0, 10, noise, t)
    assert float(out.figures["predictions"]) == 3
    exact = nfsd_closed_form(parts_of(g, torch.float64), g.scale, images.double(), noise.double(), t)
    assert_within_rounding(actual, exact, nfsd_closed_form(parts_of(g, torch.float32), g.scale, images, noise, t))
    # The switch is where the paper puts it: moved, the samples at t = 50 and 199 change by far more than rounding.
    moved = nfsd_closed_form(parts_of(g, torch.float64), g.scale, images.double(), noise.double(), t, switch=0)
    error = float((actual.double() - exact).abs().max())
    assert all(float((moved[i] - exact[i]).abs().max()) > 100 * error for i in (0, 1))
    assert torch.equal(moved[2:], exact[2:])


@pytest.mark.parametrize("step, beta", [(0, 0.0), (25, 0.5), (99, 1.0)])
def test_csd_gradient_is_its_closed_form_with_the_negative_annealed_in(tiny_sd_folder, step, beta):
    g = build_guidance(sd_job(tiny_sd_folder, rule="csd"), CPU)
    assert g.scale == 7.5 and g.settings.weighting == "uniform" and g.settings.negative_prompt == CSD_NEGATIVE
    total = 100
    assert ANNEAL_SHARE == 0.5 and g.beta(step, total) == beta  # 0 -> 1 over the first half, then held
    images, noise = fixed_inputs(2, 3)
    t = torch.tensor([100, 500, 900])
    actual, out = run(g, images, camera_batch([0.0, 120.0, 240.0]), step, total, noise, t)
    exact = csd_closed_form(parts_of(g, torch.float64), g.scale, images.double(), noise.double(), t, beta)
    assert_within_rounding(actual, exact, csd_closed_form(parts_of(g, torch.float32), g.scale, images, noise, t, beta))
    # The injected z-gradient has root-mean-square norm 1 per camera: the batch's norm is sqrt(B).
    assert float(out.figures["grad_norm"]) == pytest.approx(math.sqrt(3), rel=1e-5)
    assert float(out.figures["predictions"]) == 3


def test_csd_normalisation_makes_the_scale_matter_only_against_the_clamp(tiny_sd_folder):
    images, noise = fixed_inputs(3, 2)
    t, views = torch.tensor([300, 700]), camera_batch([0.0, 180.0])
    at = {s: run(build_guidance(sd_job(tiny_sd_folder, rule="csd", scale=s), CPU), images, views, 5, 20, noise, t)[0]
          for s in (1.0, 7.5)}
    # Equal but for float32 rounding of the scaled residual and its norm through the encoder's backward:
    # a few ulps (1.2e-7) of the largest element each, far under 1e-5 of it; a missing normalisation is 7.5x.
    torch.testing.assert_close(at[1.0], at[7.5], rtol=0, atol=1e-5 * float(at[1.0].abs().max()))


def test_without_a_negative_csd_keeps_beta_at_zero_and_nfsd_its_domain_term_at_zero(tiny_sd_folder):
    """A kind with no text has no negative: two predictions a step, and the negative is the empty prompt."""
    g = build_guidance(sd_job(tiny_sd_folder, rule="csd"), CPU)
    settings = replace(g.settings, negative_prompt="")
    bare = CSD(settings, g.predictor)
    assert bare.asked(None) == ("prompt", "null") and bare.beta(0, 10) == bare.beta(9, 10) == 0.0
    images, noise = fixed_inputs(4, 2)
    t, views = torch.tensor([300, 700]), camera_batch([0.0, 180.0])
    actual, out = run(bare, images, views, 9, 10, noise, t)
    assert float(out.figures["predictions"]) == 2
    exact = csd_closed_form(parts_of(g, torch.float64), g.scale, images.double(), noise.double(), t, 0.0)
    assert_within_rounding(actual, exact, csd_closed_form(parts_of(g, torch.float32), g.scale, images, noise, t, 0.0))


# -- the job's defaults -------------------------------------------------------------------------

@pytest.mark.parametrize("rule, negative, weighting", [("nfsd", NFSD_NEGATIVE, "sds"),
                                                       ("csd", CSD_NEGATIVE, "uniform")])
def test_an_empty_negative_becomes_the_rules_published_one_at_normal_cfg(tiny_sd_folder, rule, negative, weighting):
    pocket = validate_job({"version": 1, "prompt": "a red cube", "steps": 100,
                           "guidance": {"kind": "pocket", "rule": rule}})
    for job, scale, shape_steps in ((sd_job(tiny_sd_folder, rule=rule), 7.5, 0), (pocket, [70, 20.0, 1.5, 75], 70)):
        # The pocket teacher's normal CFG (1.5) forms no shape: its default holds SDS's 20 while the
        # shape alone trains (optim.shape_steps), then ramps down to it.
        assert job["negative_prompt"] == negative and job["guidance"]["scale"] == scale, job["guidance"]["kind"]
        assert job["optim"]["shape_steps"] == shape_steps
        assert job["guidance"]["weighting"] == weighting and validate_job(job) == job
    # A scale of the job's own trains the colour from the first step.
    assert validate_job({"version": 1, "prompt": "a red cube", "steps": 100,
                         "guidance": {"kind": "pocket", "rule": rule, "scale": 1.5}})["optim"]["shape_steps"] == 0
    # The user's words win.
    mine = sd_job(tiny_sd_folder, negative_prompt="a cartoon", rule=rule, scale=12, weighting="fantasia3d")
    assert (mine["negative_prompt"], mine["guidance"]["scale"], mine["guidance"]["weighting"]) == ("a cartoon", 12,
                                                                                                 "fantasia3d")
    # SDS keeps its own strength and no negative.
    sds = sd_job(tiny_sd_folder)
    assert sds["negative_prompt"] == "" and sds["guidance"]["scale"] == 100


# -- the pocket teacher's null and style negatives -----------------------------------------------

def three(teacher, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    views = views_for([15.0, 160.0][:batch], [10.0, 25.0][:batch], torch.rand(batch, 3, generator=g))
    z = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    return z, torch.tensor([250, 650][:batch]), views


@pytest.mark.parametrize("pose_matched", [True, False])
def test_without_a_negative_null_is_uncond(pose_matched):
    teacher = PocketPredictor(guidance_settings(tiny_job(guidance={"pose_matched": pose_matched})), "cpu",
                              cond_views=16, world_views=2)
    out = teacher.predict(*three(teacher), ("prompt", "uncond", "null"))
    assert torch.equal(out["null"], out["uncond"]) and not torch.equal(out["null"], out["prompt"])


def test_a_style_negative_is_the_world_in_that_style_and_null_the_plain_world():
    teacher = PocketPredictor(guidance_settings(tiny_job(negative_prompt="Blurry, ugly, DARK.")), "cpu",
                              cond_views=16, world_views=2)
    assert teacher.styles == ("blurry", "dark") and teacher.negative is None
    plain = PocketPredictor(guidance_settings(tiny_job()), "cpu", cond_views=16, world_views=2)
    assert torch.equal(teacher.null.colour, plain.uncond.colour)  # the world, the prompt's own views among it
    assert torch.equal(teacher.uncond.colour, styles.restyled(plain.uncond, ("blurry", "dark")).colour)
    assert torch.equal(teacher.uncond.obj, plain.uncond.obj)
    assert torch.equal(teacher.uncond.framing, plain.uncond.framing)
    _, _, views = three(teacher, batch=1)
    background = views.background[0].double()
    # Near one of the world's images, so the by-the-book softmax (no log-sum-exp) does not underflow.
    t = torch.tensor([500])
    a = teacher.alphas_cumprod[t].double()
    noise = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    z = a.sqrt() * composites(teacher.null, background)[7:8] + (1 - a).sqrt() * noise
    out = teacher.predict(z, t, views, ("prompt", "uncond", "null"))
    for name, data in (("uncond", teacher.uncond), ("null", teacher.null)):
        want = brute_force_eps(z[0], a[0], data, background, teacher.uncond_mask(views, data)[0])
        assert torch.allclose(out[name][0], want, atol=1e-6), name
    assert not torch.allclose(out["uncond"], out["null"], atol=1e-3)


def test_pose_matched_style_negative_and_the_data_stream():
    styled = PocketPredictor(guidance_settings(tiny_job(negative_prompt=CSD_NEGATIVE, guidance={"pose_matched": True})),
                             "cpu")
    plain = PocketPredictor(guidance_settings(tiny_job(guidance={"pose_matched": True})), "cpu")
    assert styled.styles == ("oversaturated", "noisy")
    z, t, views = three(styled)
    sets, plain_sets = styled.posed_sets(views, null=True), plain.posed_sets(views)
    assert torch.equal(sets["uncond"][0].colour, styles.restyled(sets["null"][0], styled.styles).colour)
    assert torch.equal(sets["null"][0].colour, plain_sets["uncond"][0].colour)
    # The styled teacher draws exactly what the plain one draws: its null is the plain one's uncond,
    # step after step, whether a rule asks for null or not.
    for step in range(2):
        a = styled.predict(z, t, views, ("prompt", "uncond", "null"))
        b = plain.predict(z, t, views, ("prompt", "uncond"))
        assert torch.equal(a["prompt"], b["prompt"]) and torch.equal(a["null"], b["uncond"]), step
        assert not torch.allclose(a["uncond"], a["null"], atol=1e-3)


def test_asking_for_null_beside_an_object_negative_draws_after_the_rest():
    def teacher():
        return PocketPredictor(guidance_settings(tiny_job(negative_prompt="a blue sphere",
                                                          guidance={"pose_matched": True})), "cpu")
    asks, skips = teacher(), teacher()
    z, t, views = three(asks)
    a = asks.predict(z, t, views, ("prompt", "uncond", "null"))
    b = skips.predict(z, t, views, ("prompt", "uncond"))
    assert torch.equal(a["prompt"], b["prompt"]) and torch.equal(a["uncond"], b["uncond"])
    assert not torch.allclose(a["null"], a["uncond"], atol=1e-3)  # the world, not the blue sphere
    blind = PocketPredictor(guidance_settings(tiny_job(negative_prompt="a blue sphere")), "cpu",
                            cond_views=16, world_views=2)
    plain = PocketPredictor(guidance_settings(tiny_job()), "cpu", cond_views=16, world_views=2)
    assert torch.equal(blind.null.colour, plain.uncond.colour)


@pytest.mark.parametrize("negative, expected", [(NFSD_NEGATIVE, ("blurry", "dull", "dark")),
                                                (CSD_NEGATIVE, ("oversaturated", "noisy"))])
def test_both_published_negatives_validate_and_answer_every_condition(negative, expected):
    job = tiny_job(negative_prompt=negative)
    teacher = PocketPredictor(guidance_settings(job), "cpu", cond_views=16, world_views=2)
    assert teacher.styles == expected
    out = teacher.predict(*three(teacher), ("prompt", "uncond", "null"))
    assert set(out) == {"prompt", "uncond", "null"} and all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("negative, says", [
    ("ugly, low quality, tiling", "is not in the pocket world"),
    ("a ceramic teapot", "is not in the pocket world"),
    ("a red cube, blurry", "lists the object 'a red cube'"),
])
def test_negatives_the_world_cannot_draw_are_refused_naming_negative_prompt(negative, says):
    with pytest.raises(JobError) as caught:
        tiny_job(negative_prompt=negative)
    assert caught.value.key == "negative_prompt" and str(caught.value).startswith("negative_prompt: ")
    assert says in caught.value.problem and "blurry" in caught.value.problem  # it names what it can draw
    settings = replace(guidance_settings(tiny_job()), negative_prompt=negative)  # past validation: the teacher says so
    with pytest.raises(ValueError, match=r"^negative_prompt: "):
        PocketPredictor(settings, "cpu", cond_views=16, world_views=2)


def test_an_object_negative_is_unchanged():
    teacher = PocketPredictor(guidance_settings(tiny_job(negative_prompt="a blue sphere")), "cpu",
                              cond_views=16, world_views=2)
    assert teacher.negative == "a blue sphere" and teacher.styles == ()
    assert torch.equal(teacher.uncond.colour, dataset.object_views("a blue sphere", SIZE, 16, 1).colour)


# -- each style does what it says ----------------------------------------------------------------

def renders() -> torch.Tensor:
    """Premultiplied RGBA renders of a few world objects, 32 px (lit and flat)."""
    sets = [dataset.render_views(p, 32, 6, seed=3) for p in ("a red cube", "a blue torus", "a yellow cone")]
    return torch.cat([torch.cat((s.colour.view(len(s), 3, 32, 32), s.alpha.view(len(s), 1, 32, 32)), 1) for s in sets])


def hsv_of_opaque(rgba):
    """(h, s, v) by the standard library's colorsys, over every fully opaque pixel."""
    opaque = rgba[:, 3] >= 1 - 1e-6
    rgb = rgba[:, :3].permute(0, 2, 3, 1)[opaque].double().tolist()
    return torch.tensor([colorsys.rgb_to_hsv(*p) for p in rgb], dtype=torch.float64)


def test_oversaturated_scales_saturation_keeping_hue_and_value():
    before = renders()
    after = styles.apply(before, ("oversaturated",))
    h0, s0, v0 = hsv_of_opaque(before).T
    h1, s1, v1 = hsv_of_opaque(after).T
    bound = 1e-5  # float32 arithmetic on values in [0, 1]; S = (V - min) / V divides that by V
    lit = v0 > 0.05
    assert torch.allclose(v1, v0, atol=bound)
    assert torch.allclose(s1[lit], (styles.SATURATION_GAIN * s0[lit]).clamp(max=1), atol=bound / 0.05)
    hue_gap = ((h1 - h0 + 0.5) % 1.0 - 0.5).abs()
    assert float(hue_gap[(s0 > 0.05) & (v0 > 0.05)].max()) < 1e-3
    assert float(s1.mean()) > float(s0.mean())
    assert torch.equal(after[:, 3], before[:, 3])


def test_dark_scales_value_and_dull_pulls_towards_grey():
    before = renders()
    _, s0, v0 = hsv_of_opaque(before).T
    _, s1, v1 = hsv_of_opaque(styles.apply(before, ("dark",))).T
    assert torch.allclose(v1, styles.DARK_VALUE * v0, atol=1e-6) and torch.allclose(s1, s0, atol=1e-4)
    dull = styles.apply(before, ("dull",))
    opaque = before[:, 3:] >= 1 - 1e-6
    grey_gap = lambda x: (x[:, :3] - styles.GREY).abs()[opaque.expand(-1, 3, -1, -1)]  # noqa: E731
    assert torch.allclose(grey_gap(dull), (1 - styles.DULL_MIX) * grey_gap(before), atol=1e-6)
    _, s2, _ = hsv_of_opaque(dull).T
    assert float(s2.mean()) < float(s0.mean())


def test_blurry_smooths_the_composite_whatever_the_background():
    before = renders().double()
    after = styles.apply(before, ("blurry",))

    def energy(x):
        return float(((x[..., 1:, :] - x[..., :-1, :]) ** 2).sum() + ((x[..., 1:] - x[..., :-1]) ** 2).sum())
    # A step of height h spread over BLUR_FACTOR = 4 pixels keeps 4 (h/4)^2 = h^2/4 of its squared-gradient energy.
    assert energy(after) < 0.5 * energy(before)
    # Blurring premultiplied colour and alpha blurs the composite over any solid background.
    background = torch.tensor([0.2, 0.7, 0.4], dtype=torch.float64)
    blurred_composite = styles.apply(torch.cat((world.composite(before, background), torch.ones_like(before[:, :1])),
                                               1), ("blurry",))[:, :3]
    torch.testing.assert_close(world.composite(after, background), blurred_composite, rtol=0, atol=1e-12)


def test_noisy_adds_the_same_noise_every_time_on_the_object_only():
    rgba = torch.zeros(4, 4, 32, 32)
    rgba[:, :3, 4:28, 4:28] = torch.tensor([0.6, 0.5, 0.4])[:, None, None]
    rgba[:, 3, 4:28, 4:28] = 1
    once, again = styles.apply(rgba, ("noisy",)), styles.apply(rgba, ("noisy",))
    assert torch.equal(once, again)
    assert torch.equal(once[:, :, :4], rgba[:, :, :4]) and torch.equal(once[:, 3], rgba[:, 3])  # nothing off the object
    diff = (once - rgba)[:, :3, 4:28, 4:28].double()
    n = diff.numel()  # values 4 sigma from [0, 1] are clamped: rare enough not to move the estimate
    assert abs(float(diff.std()) / styles.NOISE_STD - 1) < 5 / math.sqrt(2 * n)
    assert abs(float(diff.mean())) < 5 * styles.NOISE_STD / math.sqrt(n)


def test_styles_apply_in_one_order_and_unknown_ones_are_refused():
    before = renders()
    torch.testing.assert_close(styles.apply(before, ("dark", "blurry")), styles.apply(before, ("blurry", "dark")),
                               rtol=0, atol=0)
    assert tuple(styles.DEGRADE) == tuple(STYLES)
    with pytest.raises(ValueError, match=r"^negative_prompt: the pocket world draws no style 'sepia'"):
        styles.apply(before, ("sepia",))


# -- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["nfsd", "csd"])
def test_a_short_pocket_run_of_each_rule_ends_with_a_mesh(tmp_path, rule):
    job = validate_job({"version": 1, "prompt": "a green cylinder", "seed": 0, "steps": 24,
                        "guidance": {"kind": "pocket", "rule": rule},
                        "render": {"resolution": 16, "samples": 16}, "mesh": {"resolution": 16},
                        "output": {"preview_every": 0, "checkpoint_every": 0, "progress_every": 8}})
    out = run_job(job, tmp_path / "out", device="cpu")
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [8, 16, 24] and events[-1]["type"] == "done" and events[-1]["faces"] > 0
    for e in progress:
        assert e["figures"]["predictions"] == 3 and math.isfinite(e["loss"]) and e["figures"]["skipped_steps"] == 0
        if rule == "csd":  # one camera a step: the normalised gradient's norm is 1
            assert e["figures"]["grad_norm"] == pytest.approx(1.0, rel=1e-5)
    assert json.loads((out / "job.json").read_text())["negative_prompt"] == job["negative_prompt"]
