"""`guidance.pose_matched`: the pocket teacher's data rendered at each judged camera."""
import pytest
import torch

from blender_sds.engine.pocket import posed, world
from blender_sds.engine.guidance.teachers.closed_form import epsilon, scaled_linear_alphas_cumprod
from blender_sds.engine.guidance.teachers.pocket import PocketPredictor
from blender_sds.job import JobError, validate_job
from judges import cfg_pair, guidance_settings
from pocket_views import SIZE, brute_force_eps, tiny_job, views_for


@pytest.fixture(scope="module")
def teacher():
    return PocketPredictor(guidance_settings(tiny_job(guidance={"pose_matched": True})), "cpu")


def test_judged_orbit_is_the_engine_camera_in_unit_coordinates():
    views = views_for([0.0, 100.0, -150.0], [5.0, 30.0, 40.0], distance=[1.5, 1.8, 2.0], fovy=[40.0, 55.0, 70.0])
    orbit = posed.judged_orbit(views, torch.zeros(3), 2.0)
    assert torch.allclose(orbit.azimuth.float(), torch.tensor([0.0, 100.0, -150.0]), atol=1e-3)
    assert torch.allclose(orbit.elevation.float(), torch.tensor([5.0, 30.0, 40.0]), atol=1e-3)
    assert torch.allclose(orbit.distance.float(), torch.tensor([1.5, 1.8, 2.0]), atol=1e-5)
    assert torch.allclose(orbit.fovy.float(), torch.tensor([40.0, 55.0, 70.0]), atol=1e-3)
    assert torch.allclose(orbit.c2w()[:, :3, :3].float(), views.c2w[:, :3, :3], atol=1e-5)  # looks the same way


def test_data_are_the_prompts_object_seen_from_each_judged_camera():
    views = views_for([0.0, 45.0], [10.0, 30.0])
    orbit = posed.judged_orbit(views, torch.zeros(3), 2.0)
    data, owner = posed.object_views("a red pyramid", orbit, SIZE, torch.Generator().manual_seed(0), per_view=3)
    assert owner.tolist() == [0, 0, 0, 1, 1, 1]
    truth = world.render("pyramid", world.COLOURS["red"], orbit, SIZE, "albedo")[:, 3].reshape(2, -1)
    assert torch.allclose(data.alpha, truth[owner], atol=1e-6)  # silhouettes: exactly the judged pose
    assert not torch.allclose(data.alpha[0], data.alpha[3], atol=1e-2)  # and the two poses differ


def test_world_data_hold_every_object_at_every_camera_with_equal_weight():
    orbit = posed.judged_orbit(views_for([20.0, 200.0], [0.0, 20.0]), torch.zeros(3), 2.0)
    data, owner = posed.world_views(orbit, SIZE, torch.Generator().manual_seed(1), per_view=2)
    assert len(data) == len(world.PROMPTS) * 2 * 2
    for obj in range(len(world.PROMPTS)):
        assert sorted(owner[data.obj == obj].tolist()) == [0, 0, 1, 1]
    assert torch.allclose(data.log_prior, data.log_prior[0].expand_as(data.log_prior))
    # Tinting a white render is rendering the object: compare one against world.render.
    blue_cone = data.obj == world.PROMPTS.index("a blue cone")
    first = int(torch.nonzero(blue_cone)[0])
    alpha = world.render("cone", world.COLOURS["blue"], orbit.subset(owner[first:first + 1]), SIZE, "albedo")[:, 3]
    assert torch.allclose(data.alpha[first], alpha.reshape(-1), atol=1e-6)


def test_at_tiny_t_the_teacher_answers_with_the_judged_pose(teacher):
    """A render of the true object, barely noised, is answered by a datum of its own pose, not a neighbour's."""
    background = torch.ones(2, 3)
    views = views_for([0.0, 45.0], [10.0, 30.0], background=background)
    orbit = posed.judged_orbit(views, torch.zeros(3), 2.0)
    truth = world.render("cube", world.COLOURS["red"], orbit, SIZE, "albedo")
    x = 2 * world.composite(truth, background) - 1
    t = torch.tensor([1, 1])
    a = scaled_linear_alphas_cumprod()[t]
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)) * 1e-3
    z = a.sqrt().view(-1, 1, 1, 1) * x + (1 - a).sqrt().view(-1, 1, 1, 1) * eps
    eps_cond, _ = cfg_pair(teacher, z, t, views)
    x0 = (z - (1 - a).sqrt().view(-1, 1, 1, 1) * eps_cond) / a.sqrt().view(-1, 1, 1, 1)
    alpha_seen = (x0 - (2 * background.view(-1, 3, 1, 1) - 1)).abs().amax(1) > 1e-3
    assert torch.equal(alpha_seen, truth[:, 3] > 1e-3)  # the answer's silhouette is the render's own
    assert torch.allclose(epsilon(z, x0, a), eps_cond, atol=1e-5)


def test_pose_matched_runs_are_deterministic():
    views = views_for([30.0], [15.0], background=torch.ones(1, 3))
    z = torch.zeros(1, 3, SIZE, SIZE)
    t = torch.tensor([500])
    first = cfg_pair(PocketPredictor(guidance_settings(tiny_job(guidance={"pose_matched": True})), "cpu"), z, t, views)
    again = cfg_pair(PocketPredictor(guidance_settings(tiny_job(guidance={"pose_matched": True})), "cpu"), z, t, views)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_noise_prediction_is_the_brute_force_posterior_mean_of_the_posed_data():
    """The definition, with the data the teacher rendered for these very cameras."""
    background = torch.tensor([[0.2, 0.6, 0.9], [1.0, 1.0, 1.0]])
    views = views_for([10.0, 130.0], [5.0, 35.0], background=background)
    t = torch.tensor([500, 900])
    a = scaled_linear_alphas_cumprod()[t].double()
    z = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    teacher = PocketPredictor(guidance_settings(tiny_job(guidance={"pose_matched": True})), "cpu")
    state = teacher.pose_generator.get_state()
    cond, cond_mask, uncond, uncond_mask = teacher.posed_data(views)
    teacher.pose_generator.set_state(state)
    eps_cond, eps_uncond = cfg_pair(teacher, z, t, views)
    for data, mask, eps in ((cond, cond_mask, eps_cond), (uncond, uncond_mask, eps_uncond)):
        for b in range(2):
            want = brute_force_eps(z[b], a[b], data, background[b], mask[b])
            assert torch.allclose(eps[b], want, atol=1e-6)


def test_pose_matched_is_the_pocket_default_and_refused_for_other_kinds():
    pocket = validate_job({"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket"}})
    assert pocket["guidance"]["pose_matched"] is True
    pixel = validate_job({"version": 1, "prompt": "a cat", "guidance": {"kind": "pixel", "model": "org/name"}})
    assert pixel["guidance"]["pose_matched"] is False
    with pytest.raises(JobError, match=r"guidance\.pose_matched: only for guidance kind 'pocket'"):
        validate_job({"version": 1, "prompt": "a cat", "guidance": {"kind": "pixel", "model": "org/name",
                                                                    "pose_matched": True}})
    with pytest.raises(JobError, match=r"guidance\.pose_matched: must be true or false"):
        tiny_job(guidance={"pose_matched": 1})
