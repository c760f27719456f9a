"""The pocket world's data: marked objects in the teacher's sets, and the photo collection's front bias."""
import pytest
import torch

from blender_sds.engine.pocket import dataset, posed, world
from blender_sds.engine.pocket.cameras import fixed_orbits, random_orbits

MARKED = "a red cube with a white front"
SIZE = 8


def _front_share(azimuth: torch.Tensor) -> float:
    """The share of cameras in the front view's bucket (|azimuth| < 45)."""
    return float((((azimuth + 180) % 360 - 180).abs() < 45).double().mean())


@pytest.mark.parametrize("count, bias", [(384, 0.8), (384, 0.5), (50, 0.33), (7, 0.0), (7, 1.0), (1, 0.6)])
def test_front_bias_puts_its_share_of_cameras_in_the_front_view(count, bias):
    orbit = dataset.biased_orbits(count, bias, seed=5)
    assert len(orbit) == count
    assert _front_share(orbit.azimuth) == round(count * bias) / count
    # Each part is still spread over its range, like the engine's orbits.
    wrapped = (orbit.azimuth + 180) % 360 - 180
    front, rest = wrapped[wrapped.abs() < 45], wrapped[wrapped.abs() >= 45]
    if len(front) >= 100:
        assert front.min() < -35 and front.max() > 35
    if len(rest) >= 50:
        assert rest.min() < -170 and rest.max() > 170 and (rest.abs() < 60).any()


def test_front_bias_none_draws_the_cameras_as_before():
    assert torch.equal(dataset.biased_orbits(40, None, seed=3).eye, random_orbits(40, 3).eye)
    views = dataset.object_views("a green torus", SIZE, 12, 7)
    expected = random_orbits(12, dataset.seed_of("cameras", "green", "torus", SIZE, 12, 7))
    assert torch.equal(views.azimuth, expected.azimuth.float())
    assert torch.equal(dataset.object_views("a green torus", SIZE, 12, 7, front_bias=None).colour, views.colour)


def test_front_bias_is_part_of_the_cache_key_and_refuses_a_share_outside_zero_to_one():
    biased = dataset.object_views(MARKED, SIZE, 20, 0, front_bias=0.75)
    assert dataset.object_views(MARKED, SIZE, 20, 0, front_bias=0.75) is biased
    assert _front_share(biased.azimuth) == 0.75
    assert _front_share(dataset.object_views(MARKED, SIZE, 20, 0, front_bias=0.25).azimuth) == 0.25
    with pytest.raises(ValueError, match="front_bias"):
        dataset.biased_orbits(10, 1.5, seed=0)


def test_marked_views_carry_their_mark_and_their_own_object_index():
    plain = dataset.render_views("a red cube", SIZE, 16, seed=2)
    marked = dataset.render_views(MARKED, SIZE, 16, seed=2)
    assert set(marked.obj.tolist()) == {world.object_index(MARKED)} and world.object_index(MARKED) >= len(world.PROMPTS)
    assert set(plain.obj.tolist()) == {world.PROMPTS.index("a red cube")}
    # The plain twin's cameras and alpha; colour differs only where the front is seen.
    assert torch.equal(plain.azimuth, marked.azimuth) and torch.equal(plain.alpha, marked.alpha)
    differs = (plain.colour != marked.colour).any(-1)
    assert differs.any() and (marked.azimuth[differs].abs() < 90).all()


def test_pose_matched_views_render_the_mark():
    orbit = fixed_orbits([0.0, 180.0], [15.0, 15.0], 1.6, 45.0)
    data, owner = posed.object_views(MARKED, orbit, SIZE, torch.Generator().manual_seed(0), per_view=2)
    assert set(data.obj.tolist()) == {world.object_index(MARKED)}
    plain, _ = posed.object_views("a red cube", orbit, SIZE, torch.Generator().manual_seed(0), per_view=2)
    differs = (plain.colour != data.colour).any(-1)
    assert differs[owner == 0].all() and not differs[owner == 1].any()
