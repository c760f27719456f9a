"""The pocket teacher against its definition: the posterior mean of a finite data set."""
import pytest
import torch

from blender_sds.engine.guidance import build_guidance
from blender_sds.engine.guidance.predictor import Blend
from blender_sds.engine.scene.directions import DIRECTIONS, direction_index
from blender_sds.engine.pocket import dataset, world
from blender_sds.engine.guidance.teachers.closed_form import epsilon, posterior_mean, scaled_linear_alphas_cumprod
from blender_sds.engine.guidance.teachers.pocket import FRAMING_MINIMUM, FRAMING_WIDTH, PocketPredictor
from judges import cfg_pair, guidance_settings
from pocket_views import SIZE, brute_force_eps, composites, tiny_job, views_for


@pytest.fixture(scope="module")
def teacher():
    return PocketPredictor(guidance_settings(tiny_job()), "cpu", cond_views=24, world_views=2)


def test_schedule_is_diffusers_scaled_linear():
    from diffusers import DDPMScheduler
    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000).alphas_cumprod
    assert torch.allclose(scaled_linear_alphas_cumprod(), reference, rtol=1e-6, atol=1e-7)


def test_noise_prediction_equals_the_brute_force_posterior_mean(teacher):
    g = torch.Generator().manual_seed(0)
    background = torch.tensor([[0.2, 0.6, 0.9], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    views = views_for([10.0, 170.0, -90.0], [20.0, 5.0, 30.0], background)
    t = torch.tensor([40, 400, 900])
    a = teacher.alphas_cumprod[t].double()
    clean = composites(teacher.cond, background[0])[5]  # near the data, so the softmax is not flat
    z = torch.randn(3, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    z[0] = a[0].sqrt() * clean + (1 - a[0]).sqrt() * z[0]
    eps_cond, eps_uncond = cfg_pair(teacher, z, t, views)
    mask = teacher.cond_mask(views)
    for b in range(3):
        want_c = brute_force_eps(z[b], a[b], teacher.cond, background[b], mask[b])
        want_u = brute_force_eps(z[b], a[b], teacher.uncond, background[b], teacher.uncond_mask(views)[b])
        assert torch.allclose(eps_cond[b], want_c, atol=1e-6), b
        assert torch.allclose(eps_uncond[b], want_u, atol=1e-6), b


def test_float32_runs_agree_with_float64(teacher):
    g = torch.Generator().manual_seed(1)
    views = views_for([30.0, -120.0], [10.0, 40.0], torch.rand(2, 3, generator=g))
    z = torch.randn(2, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    t = torch.tensor([300, 700])
    c64, u64 = cfg_pair(teacher, z, t, views)
    c32, u32 = cfg_pair(teacher, z.float(), t, views)
    assert c32.dtype == torch.float32
    assert torch.allclose(c32.double(), c64, atol=1e-3) and torch.allclose(u32.double(), u64, atol=1e-3)


def test_at_tiny_t_it_returns_the_nearest_data_image(teacher):
    background = torch.tensor([0.3, 0.3, 0.8])
    x = composites(teacher.cond, background)
    g = torch.Generator().manual_seed(2)
    a = scaled_linear_alphas_cumprod()[1].double()
    for j in (0, 17, len(x) - 1):
        noisy = a.sqrt() * x[j] + (1 - a).sqrt() * torch.randn(x[j].shape, generator=g, dtype=torch.float64)
        x0 = posterior_mean(noisy[None], a[None], teacher.cond, background[None].double())[0]
        nearest = int(((x - noisy[None] / a.sqrt()) ** 2).flatten(1).sum(1).argmin())
        assert torch.allclose(x0, x[nearest], atol=1e-6)
        eps = epsilon(noisy[None], x0[None], a[None])[0]
        assert torch.allclose(noisy, a.sqrt() * x[nearest] + (1 - a).sqrt() * eps, atol=1e-9)


def test_at_large_t_it_tends_to_the_data_mean(teacher):
    background = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    x = composites(teacher.uncond, background[0])
    prior = teacher.uncond.log_prior.double().exp()
    mean = (prior[:, None, None, None] * x).sum(0) / prior.sum()
    z = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gaps = []
    for a in (1e-2, 1e-4, 1e-8):
        x0 = posterior_mean(z, torch.tensor([a], dtype=torch.float64), teacher.uncond, background)[0]
        gaps.append(float((x0 - mean).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


def test_unconditional_data_are_the_whole_world_with_the_prompts_own_views(teacher):
    uncond, cond = teacher.uncond, teacher.cond
    own = world.PROMPTS.index("a red cube")
    assert set(uncond.obj.tolist()) == set(range(len(world.PROMPTS)))
    assert torch.equal(uncond.colour[uncond.obj == own], cond.colour)  # the very same renders
    assert (uncond.obj != own).sum() == 2 * (len(world.PROMPTS) - 1)
    mass = torch.zeros(len(world.PROMPTS)).index_add(0, uncond.obj, uncond.log_prior.exp())
    assert torch.allclose(mass, torch.ones(len(world.PROMPTS)))  # every object weighs the same
    # Where a render is one of the prompt's own views, both denoisers agree: CFG adds nothing.
    background = torch.ones(1, 3, dtype=torch.float64)
    views = views_for([float(cond.azimuth[3])], [float(cond.elevation[3])], background)
    a = teacher.alphas_cumprod[torch.tensor([30])].double()
    z = a.sqrt() * composites(cond, background[0])[3:4]
    eps_c, eps_u = cfg_pair(teacher, z, torch.tensor([30]), views)
    assert torch.allclose(eps_c, eps_u, atol=1e-6)


def test_view_dependent_data_follow_the_judged_cameras_direction(teacher):
    views = views_for([0.0, 180.0, 90.0, 0.0], [10.0, 10.0, 10.0, 80.0])
    mask = teacher.direction_mask(views)
    data_direction = teacher.cond.direction
    assert torch.equal(data_direction, direction_index(teacher.cond.azimuth, teacher.cond.elevation))
    for b, bucket in enumerate((1, 2, 0)):  # front, back, side
        assert mask[b].any() and torch.equal(mask[b], data_direction == bucket)
    assert mask[3].all()  # no overhead data in the default elevation range: every view may answer
    assert not (teacher.cond_mask(views) & ~mask).any()  # framing only narrows it further
    flat = PocketPredictor(guidance_settings(tiny_job(guidance={"view_dependent": False})), "cpu", cond_views=24, world_views=2)
    assert flat.direction_mask(views).all()


def test_data_answer_only_images_framed_like_theirs(teacher):
    # The teacher is told how big the bounds look (a camera condition shared by both
    # branches), so an object's apparent size says something about its real size.
    views = views_for([30.0, 30.0], [10.0, 10.0], distance=[1.9, 1.5], fovy=[68.0, 42.0])
    judged = teacher.judged_framing(views)
    expected = torch.log(0.5 / torch.tan(torch.deg2rad(torch.tensor([34.0, 21.0]))) / torch.tensor([1.9, 1.5]))
    assert torch.allclose(judged, expected, atol=1e-5)
    for mask, data, minimum, allowed in ((teacher.cond_mask(views), teacher.cond, FRAMING_MINIMUM[0],
                                          teacher.direction_mask(views)),
                                         (teacher.uncond_mask(views), teacher.uncond, FRAMING_MINIMUM[1],
                                          torch.ones(2, len(teacher.uncond), dtype=torch.bool))):
        for b in range(2):
            gap = (data.framing - judged[b]).abs()
            kept, dropped = gap[mask[b]], gap[allowed[b] & ~mask[b]]
            assert len(kept) >= min(minimum, int(allowed[b].sum()))
            assert kept.max() <= FRAMING_WIDTH or len(kept) == min(minimum, int(allowed[b].sum()))  # or the nearest few
            assert len(dropped) == 0 or dropped.min() >= kept.max()
    assert not torch.equal(teacher.uncond_mask(views)[0], teacher.uncond_mask(views)[1])


def test_conditional_pulls_towards_the_prompt_unconditional_towards_the_world(teacher):
    # From pure noise at mid t, the red cube's data make a redder estimate than the whole world's.
    z = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([600])
    views = views_for([0.0], [10.0], torch.ones(1, 3))
    eps_c, eps_u = cfg_pair(teacher, z, t, views)
    a = teacher.alphas_cumprod[t]
    x0_c = (z - (1 - a).sqrt() * eps_c) / a.sqrt()
    x0_u = (z - (1 - a).sqrt() * eps_u) / a.sqrt()
    redness = lambda x0: float((x0[:, 0] - x0[:, 1]).mean())  # noqa: E731
    assert redness(x0_c) > redness(x0_u) + 0.01


def test_background_defaults_to_white(teacher):
    z = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([500])
    none = cfg_pair(teacher, z, t, views_for([0.0], [0.0]))
    white = cfg_pair(teacher, z, t, views_for([0.0], [0.0], torch.ones(1, 3)))
    assert torch.equal(none[0], white[0]) and torch.equal(none[1], white[1])


def test_encode_resizes_to_the_teachers_resolution_and_maps_to_minus_one_one(teacher):
    images = torch.rand(2, 3, 2 * SIZE, 2 * SIZE, requires_grad=True)
    z = teacher.encode(images)
    assert z.shape == (2, 3, SIZE, SIZE) and z.min() >= -1 and z.max() <= 1
    z.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    same = torch.rand(1, 3, SIZE, SIZE)
    assert torch.equal(teacher.encode(same), same * 2 - 1)
    assert teacher.needs_solid_background


def test_negative_prompt_replaces_the_unconditional_data():
    job = tiny_job(negative_prompt="a blue sphere")
    g = PocketPredictor(guidance_settings(job), "cpu", cond_views=24, world_views=2)
    assert len(g.uncond) == 24
    expected = dataset.object_views("a blue sphere", SIZE, 24, 1)
    assert torch.equal(g.uncond.colour, expected.colour)
    blue = g.uncond.colour.view(24, 3, -1).sum(-1)
    assert (blue[:, 2] > blue[:, 0]).all()
    with pytest.raises(ValueError, match=r"^negative_prompt: 'a ceramic teapot' is not in the pocket world"):
        PocketPredictor(guidance_settings(tiny_job(negative_prompt="a ceramic teapot")), "cpu", cond_views=24,
                        world_views=2)


def test_prompt_outside_the_world_is_refused_with_the_vocabulary():
    with pytest.raises(ValueError, match=r"prompt: 'a ceramic teapot' is not in the pocket world.*cube"):
        PocketPredictor(guidance_settings(tiny_job(prompt="a ceramic teapot")), "cpu", cond_views=4, world_views=1)


def test_data_are_deterministic_and_cached():
    a = dataset.render_views("a green torus", SIZE, 8, seed=7)
    b = dataset.render_views("a green torus", SIZE, 8, seed=7)
    c = dataset.render_views("a green torus", SIZE, 8, seed=8)
    assert torch.equal(a.colour, b.colour) and torch.equal(a.azimuth, b.azimuth)
    assert not torch.equal(a.azimuth, c.azimuth)
    assert dataset.object_views("a green torus", SIZE, 8, 7) is dataset.object_views("a green torus", SIZE, 8, 7)


def test_full_sds_call_through_the_factory():
    job = tiny_job(guidance={"scale": 10})
    guidance = build_guidance(job, torch.device("cpu"))
    assert isinstance(guidance.predictor, PocketPredictor) and guidance.scale == 10
    images = torch.rand(2, 3, SIZE, SIZE, requires_grad=True)
    out = guidance(images, views_for([0.0, 90.0], [10.0, 10.0], torch.rand(2, 3)), step=3, total_steps=100)
    out.loss.backward()
    assert torch.isfinite(out.loss) and images.grad.abs().sum() > 0


# -- marked objects, their front bias, and blends of direction prompts (Perp-Neg) -------------

@pytest.fixture(scope="module")
def marked_teacher():
    job = tiny_job(prompt="a red cube with a white front")
    return PocketPredictor(guidance_settings(job), "cpu", cond_views=40, world_views=2)


def test_marked_data_are_front_biased_and_wear_the_mark(marked_teacher):
    cond = marked_teacher.cond
    front = direction_index(cond.azimuth, cond.elevation) == DIRECTIONS.index("front")
    assert float(front.double().mean()) == round(40 * 0.8) / 40  # guidance.front_bias's default
    assert int(cond.obj[0]) == world.object_index("a red cube with a white front")
    assert marked_teacher.object == "a red cube with a white front"


def test_a_blend_of_directions_is_the_mixture_of_their_buckets(marked_teacher):
    """x0 under a Blend is the posterior mean of the mixture sum_d w_d p(x | bucket d), each bucket
    uniform over its data, written out one datum at a time."""
    from dataclasses import replace

    t_ = marked_teacher
    background = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.5, 0.7]], dtype=torch.float64)
    views = views_for([20.0, 150.0], [10.0, 15.0], background)
    weights = torch.zeros(2, len(DIRECTIONS))
    weights[0, DIRECTIONS.index("front")], weights[0, DIRECTIONS.index("side")] = 0.7, 0.3
    weights[1, DIRECTIONS.index("side")], weights[1, DIRECTIONS.index("back")] = 0.4, 0.6
    blend = Blend("positive", weights)
    g = torch.Generator().manual_seed(9)
    t = torch.tensor([300, 600])
    a = t_.alphas_cumprod[t].double()
    clean = composites(t_.cond, background[0])[3]
    z = torch.randn(2, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    z[0] = a[0].sqrt() * clean + (1 - a[0]).sqrt() * z[0]
    eps = t_.predict(z, t, views, (blend,))["positive"]
    mask, _ = t_.blend_weights(blend, views)  # the framing rule is the teacher's own (tested above)
    for b in range(2):
        kept = mask[b]
        counts = torch.bincount(t_.cond.direction[kept], minlength=len(DIRECTIONS)).double()
        prior = weights[b].double()[t_.cond.direction] / counts[t_.cond.direction].clamp_min(1)
        data = replace(t_.cond, log_prior=prior.log().float())
        want = brute_force_eps(z[b], a[b], data, background[b], kept & (prior > 0))
        assert torch.allclose(eps[b], want, atol=1e-6), b
    # A one-hot blend is the view-dependent prompt itself.
    one_hot = Blend.one_hot("front", direction_index(views.azimuth, views.elevation))
    same = t_.predict(z, t, views, (one_hot, "prompt"))
    torch.testing.assert_close(same["front"], same["prompt"], rtol=0, atol=1e-9)


def test_pose_matched_teacher_answers_a_blend_with_its_prompt():
    job = tiny_job(prompt="a blue sphere with a yellow front", guidance={"pose_matched": True})
    teacher = PocketPredictor(guidance_settings(job), "cpu")
    views = views_for([40.0], [10.0], torch.ones(1, 3, dtype=torch.float64))
    z = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    teacher.pose_generator.manual_seed(5)
    blended = teacher.predict(z, torch.tensor([500]), views, (Blend("p", torch.tensor([[0.5, 0.5, 0.0, 0.0]])),))
    teacher.pose_generator.manual_seed(5)
    prompt = teacher.predict(z, torch.tensor([500]), views, ("prompt",))
    torch.testing.assert_close(blended["p"], prompt["prompt"], rtol=0, atol=0)


def test_a_marked_negative_prompt_keeps_its_mark():
    job = tiny_job(prompt="a red cube", negative_prompt="A red cube with a white front.")
    teacher = PocketPredictor(guidance_settings(job), "cpu", cond_views=8, world_views=2)
    assert teacher.negative == "a red cube with a white front"
    assert int(teacher.uncond.obj[0]) == world.object_index("a red cube with a white front")
