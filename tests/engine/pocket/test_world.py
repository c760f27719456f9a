"""The pocket world: prompts, camera conventions, analytic renders and surface truth."""
import math

import numpy as np
import pytest
import torch

from blender_sds.engine.scene.colour import srgb_to_linear
from blender_sds.engine.pocket import shapes, world
from blender_sds.engine.pocket.cameras import fixed_orbits, random_orbits


def test_vocabulary_is_at_least_six_by_six():
    assert len(world.SHAPE_NAMES) >= 6 and len(world.COLOUR_NAMES) >= 6
    assert {"sphere", "cube", "cylinder", "cone", "torus"} <= set(world.SHAPE_NAMES)
    assert len(world.PROMPTS) == len(set(world.PROMPTS)) == len(world.SHAPE_NAMES) * len(world.COLOUR_NAMES)
    for prompt in world.PROMPTS:
        assert world.prompt_for(*world.parse_prompt(prompt)) == prompt


@pytest.mark.parametrize("text, expected", [
    ("a red cube", ("red", "cube")),
    ("  A Blue   Torus. ", ("blue", "torus")),
    ("an yellow cone", ("yellow", "cone")),
    ("purple pyramid", ("purple", "pyramid")),
])
def test_parse_prompt_accepts_the_worlds_words(text, expected):
    assert world.parse_prompt(text) == expected


@pytest.mark.parametrize("text", ["a red teapot", "a cube", "a orange cube", "a red cube on a table", "", "cube red"])
def test_parse_prompt_names_the_prompt_and_the_vocabulary(text):
    with pytest.raises(ValueError) as info:
        world.parse_prompt(text)
    message = str(info.value)
    assert message.startswith("prompt:") and repr(text) in message
    for word in world.SHAPE_NAMES + world.COLOUR_NAMES:
        assert word in message


def test_orbit_follows_the_job_contract():
    orbit = fixed_orbits([0.0, 90.0, 180.0], [0.0, 0.0, 0.0], 2.0, 50.0)
    np.testing.assert_allclose(orbit.positions().numpy(), [[0, -2, 0], [2, 0, 0], [0, 2, 0]], atol=1e-12)
    c2w = orbit.c2w()
    # Azimuth 0 is Blender's Front view: looking along +Y, +X to the right, +Z up.
    np.testing.assert_allclose(c2w[0, :3, 0].numpy(), [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[0, :3, 1].numpy(), [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(c2w[0, :3, 2].numpy(), [0, -1, 0], atol=1e-12)  # camera looks down -Z
    rot = c2w[:, :3, :3]
    np.testing.assert_allclose((rot @ rot.transpose(1, 2)).numpy(), np.eye(3)[None].repeat(3, 0), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(3, dtype=torch.float64))


def test_random_orbits_stay_in_the_default_ranges_and_cover_every_azimuth():
    orbit = random_orbits(400, seed=3, jitter=False)
    assert orbit.elevation.min() >= -10 - 1e-9 and orbit.elevation.max() <= 45 + 1e-9
    assert orbit.distance.min() >= 1.5 - 1e-9 and orbit.distance.max() <= 2.0 + 1e-9
    assert orbit.fovy.min() >= 40 and orbit.fovy.max() <= 70
    counts = torch.histc(orbit.azimuth, bins=8, min=-180, max=180)
    assert counts.min() >= 49  # stratified: 50 per 45-degree sector, give or take a boundary
    again = random_orbits(400, seed=3, jitter=False)
    assert torch.equal(orbit.eye, again.eye) and torch.equal(orbit.fovy, again.fovy)
    # Like a pocket job's orbit cameras: positions and up vectors shaken, the look-at point the centre.
    shaken = random_orbits(400, seed=3)
    assert float(shaken.target.norm(dim=-1).max()) == 0.0
    assert 0.005 < float((shaken.eye - orbit.eye).abs().mean()) and float((shaken.eye - orbit.eye).abs().max()) <= 0.02 + 1e-12
    assert float((shaken.up - orbit.up).abs().max()) > 0.01
    assert torch.equal(shaken.fovy, orbit.fovy)


def test_framing_is_the_log_apparent_size_of_the_bounds():
    orbit = fixed_orbits([0.0, 50.0], [0.0, 20.0], 1.6, 50.0)
    focal_over_height = 0.5 / math.tan(math.radians(25.0))
    assert torch.allclose(orbit.framing(), torch.full((2,), math.log(focal_over_height / 1.6), dtype=torch.float64))


def test_sphere_silhouette_has_the_analytic_area():
    size, distance, fovy = 64, 1.6, 50.0
    orbit = fixed_orbits([30.0], [20.0], distance, fovy)
    alpha = world.render("sphere", (1, 1, 1), orbit, size, "albedo", supersample=4)[0, 3]
    focal = 0.5 * size / math.tan(math.radians(fovy) / 2)
    radius_px = focal * math.tan(math.asin(shapes.SHAPES["sphere"].radius / distance))  # a circular tangent cone
    assert float(alpha.sum()) == pytest.approx(math.pi * radius_px**2, rel=0.01)


def test_cube_from_the_front_is_a_centred_square():
    size, distance, fovy = 64, 1.5, 45.0
    orbit = fixed_orbits([0.0], [0.0], distance, fovy)
    alpha = world.render("cube", (1, 1, 1), orbit, size, "albedo", supersample=4)[0, 3]
    focal = 0.5 * size / math.tan(math.radians(fovy) / 2)
    half = shapes.SHAPES["cube"].half
    side_px = 2 * half * focal / (distance - half)  # the near face hides the rest
    assert float(alpha.sum()) == pytest.approx(side_px**2, rel=0.01)
    rows, cols = (alpha > 0.5).nonzero(as_tuple=True)
    assert rows.max() - rows.min() == cols.max() - cols.min()
    assert float(rows.float().mean()) == pytest.approx(size / 2 - 0.5, abs=0.01)
    assert float(cols.float().mean()) == pytest.approx(size / 2 - 0.5, abs=0.01)


def test_cone_points_up_and_the_torus_has_a_hole_seen_from_above():
    orbit = fixed_orbits([0.0], [0.0], 1.6, 45.0)
    alpha = world.render("cone", (1, 1, 1), orbit, 64, "albedo")[0, 3]
    width = (alpha > 0.5).sum(dim=1)  # per image row (row 0 is the top)
    rows = width.nonzero().squeeze(-1)
    widest = int(width.argmax())
    assert width[rows[0]] < width[widest] // 4 and widest > (rows[0] + rows[-1]) / 2  # apex on top, base below
    top = fixed_orbits([0.0], [89.0], 1.6, 45.0)
    alpha = world.render("torus", (1, 1, 1), top, 64, "albedo")[0, 3]
    ring_px = round(0.5 * 64 / math.tan(math.radians(22.5)) * shapes.SHAPES["torus"].major / 1.6)
    assert alpha[32, 32] == 0 and alpha[32, 32 + ring_px] == 1 and alpha[32, 32 - ring_px - 1] == 1


@pytest.mark.parametrize("name", list(shapes.SHAPES))
def test_ray_hits_lie_on_the_surface_with_outward_normals(name):
    shape = shapes.SHAPES[name]
    g = torch.Generator().manual_seed(0)
    origins = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g, dtype=torch.float64), dim=-1) * 1.7
    targets = 1.2 * shapes.EXTENT * (2 * torch.rand(4000, 3, generator=g, dtype=torch.float64) - 1)
    dirs = torch.nn.functional.normalize(targets - origins, dim=-1)
    t, normal = shape.intersect(origins, dirs)
    hit = torch.isfinite(t)
    assert 0.2 < hit.float().mean() < 1
    points = origins[hit] + t[hit, None] * dirs[hit]
    assert shape.level(points).abs().max() < 1e-4
    assert ((normal[hit] * dirs[hit]).sum(-1) < 1e-9).all()  # facing the camera
    # Just before the hit the ray is still outside; misses never pass inside.
    assert (shape.level(points - 1e-3 * dirs[hit]) > 0).all()
    steps = torch.linspace(0, 3.4, 400, dtype=torch.float64)
    along = origins[~hit][:, None] + steps[None, :, None] * dirs[~hit][:, None]
    assert (shape.level(along.reshape(-1, 3)) > -1e-9).all()


def test_rays_grazing_the_torus_hit_or_miss_it_exactly(monkeypatch):
    """Rays along X over the top of the tube, at heights just under and over it: where tracing
    crawls, the quartic's first root gives the exact first hit, and a ray clear of the tube misses."""
    torus = shapes.SHAPES["torus"]
    finished = []
    first_root = torus.first_root
    monkeypatch.setattr(torus, "first_root", lambda *a: finished.append(len(a[0])) or first_root(*a))
    heights = torch.tensor([-3e-3, -1e-4, 1e-4, 3e-3], dtype=torch.float64) + torus.minor
    origins = torch.stack((torch.full_like(heights, -1.5), torch.zeros_like(heights), heights), -1)
    dirs = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).expand(len(heights), 3)
    t, normal = torus.intersect(origins, dirs)
    assert sum(finished) >= 2  # the grazing rays were the quartic's
    under = heights < torus.minor
    reach = torus.major + (torus.minor**2 - heights[under] ** 2).sqrt()  # |x| of the first hit
    torch.testing.assert_close(t[under], 1.5 - reach, rtol=0, atol=1e-9)
    assert torch.isinf(t[~under]).all()
    assert (normal[under, 2] > 0.9).all()  # the tube's top


@pytest.mark.parametrize("name", list(shapes.SHAPES))
def test_truth_points_are_on_the_surface_and_inside_the_middle_of_the_bounds(name):
    bounds = {"center": (1.0, -2.0, 0.5), "size": 3.0}
    points = world.truth_points(f"a red {name}", 5000, bounds, seed=1)
    unit = world.to_unit(points, bounds)
    assert np.abs(unit).max() <= shapes.EXTENT + 1e-9
    assert float(shapes.SHAPES[name].level(torch.from_numpy(unit)).abs().max()) < 1e-9
    assert np.array_equal(points, world.truth_points(f"a red {name}", 5000, bounds, seed=1))


def test_truth_points_are_uniform_by_area():
    cylinder = shapes.SHAPES["cylinder"]
    points = world.to_unit(world.truth_points("a blue cylinder", 40000, seed=0))
    on_caps = np.abs(np.abs(points[:, 2]) - cylinder.half_height) < 1e-12
    cap_share = 2 * math.pi * cylinder.radius**2 / cylinder.area()
    assert on_caps.mean() == pytest.approx(cap_share, abs=0.01)
    torus = world.to_unit(world.truth_points("a blue torus", 40000, seed=0))
    outer = np.hypot(torus[:, 0], torus[:, 1]) > shapes.SHAPES["torus"].major
    expected = 0.5 + shapes.SHAPES["torus"].minor / (math.pi * shapes.SHAPES["torus"].major)
    assert outer.mean() == pytest.approx(expected, abs=0.01)


def test_truth_colour_is_the_linear_albedo():
    for colour in world.COLOUR_NAMES:
        expected = srgb_to_linear(np.array(world.COLOURS[colour]))
        np.testing.assert_allclose(world.truth_colour(f"a {colour} cube"), expected)
    assert world.truth_colour("a white sphere")[0] < world.COLOURS["white"][0]  # linear is darker


def test_renders_are_premultiplied_and_lit_from_the_light():
    orbit = fixed_orbits([20.0, 20.0], [15.0, 15.0], 1.7, 50.0)
    eye = orbit.positions()
    lights = torch.stack((eye[0] * 1.2, -eye[1] * 1.2))  # behind the object for the second view
    rgba = world.render("sphere", world.COLOURS["green"], orbit, 32, "lambertian", lights)
    assert (rgba[:, :3] <= rgba[:, 3:4] + 1e-6).all()
    assert rgba[0, 1].sum() > 5 * rgba[1, 1].sum()
    # Ambient only where the light cannot reach: green channel = albedo * AMBIENT.
    assert float(rgba[1, 1, 16, 16]) == pytest.approx(world.COLOURS["green"][1] * world.AMBIENT, rel=1e-4)
    flat = world.render("sphere", world.COLOURS["green"], orbit, 32, "albedo")
    assert float(flat[0, 1, 16, 16]) == pytest.approx(world.COLOURS["green"][1], rel=1e-6)
    composed = world.composite(flat, (1.0, 0.0, 0.0))
    assert float(composed[0, 0, 0, 0]) == 1.0 and float(composed[0, 1, 16, 16]) == pytest.approx(0.70, rel=1e-6)


# -- marked objects: a front the Janus measure can look for ------------------------------------

def test_marked_prompts_round_trip_and_keep_the_plain_parse():
    assert len(world.MARKED_PROMPTS) == len(set(world.MARKED_PROMPTS)) == len(world.PROMPTS) * 5
    for prompt in world.MARKED_PROMPTS:
        obj = world.parse_object(prompt)
        assert world.prompt_for(*obj) == prompt and obj.mark not in (None, obj.colour)
        assert world.parse_prompt(prompt) == (obj.colour, obj.shape)
    for prompt in world.PROMPTS:
        assert world.parse_object(prompt) == world.PocketObject(*world.parse_prompt(prompt), None)
    assert world.prompt_for("red", "cube", "white") == "a red cube with a white front"


@pytest.mark.parametrize("text", ["a red cube with a white front", "  A Red Cube With The White Front. ",
                                  "red cube with an white front", "the red cube with white front!"])
def test_parse_object_takes_the_marked_form_freely(text):
    assert world.parse_object(text) == ("red", "cube", "white")


def test_a_mark_of_the_body_colour_is_refused_by_name():
    with pytest.raises(world.PocketPromptError) as info:
        world.parse_object("a red cube with a red front")
    assert str(info.value).startswith("prompt: 'a red cube with a red front'") and "differ" in info.value.problem


@pytest.mark.parametrize("text", ["a red cube with a orange front", "a red cube with a white back",
                                  "a red cube with a white front please", "a red cube with white", "a red cube with"])
def test_unknown_marked_words_name_both_forms(text):
    with pytest.raises(ValueError) as info:
        world.parse_object(text)
    message = str(info.value)
    assert repr(text) in message and "a <colour> <shape>" in message and "with a <colour> front" in message


def test_object_index_keeps_plain_indices_and_gives_marked_objects_their_own():
    assert [world.object_index(p) for p in world.PROMPTS] == list(range(len(world.PROMPTS)))
    marked = [world.object_index(p) for p in world.MARKED_PROMPTS]
    assert min(marked) == len(world.PROMPTS) and len(set(marked)) == len(marked)
    same = world.object_index("a red cube with a white front")
    assert world.object_index("The red cube with the white front.") == same


def test_the_mark_is_the_front_facing_front_half():
    cos = math.cos(math.radians(world.MARK_HALF_ANGLE))
    points = np.array([[0, -0.3, 0], [0, -0.3, 0.1], [0, 0.1, 0], [0, -0.3, 0], [0, -0.3, 0]])
    normals = np.array([[0, -1, 0], [0, -0.906, 0.423], [0, -1, 0], [0, 0, 1],
                        [math.sin(math.acos(cos)) * 1.01, -cos * 0.99, 0]])
    assert world.is_marked(points, normals).tolist() == [True, True, False, False, False]
    assert torch.equal(world.is_marked(torch.from_numpy(points), torch.from_numpy(normals)),
                       torch.tensor([True, True, False, False, False]))
    # The torus's inner far side faces the front but lies behind the centre: plain.
    torus = shapes.SHAPES["torus"]
    inner_far = torch.tensor([[0.0, torus.major - torus.minor, 0.0]], dtype=torch.float64)
    assert torus.level(inner_far).abs().max() < 1e-12
    assert not world.is_marked(inner_far, torus.surface_normals(inner_far)).any()


@pytest.mark.parametrize("name", list(shapes.SHAPES))
def test_level_normals_are_outward_and_agree_with_the_ray_normals(name):
    shape = shapes.SHAPES[name]
    g = torch.Generator().manual_seed(1)
    origins = torch.nn.functional.normalize(torch.randn(2000, 3, generator=g, dtype=torch.float64), dim=-1) * 1.7
    t, normal = shape.intersect(origins, torch.nn.functional.normalize(-origins, dim=-1))
    hit = torch.isfinite(t)
    points = origins[hit] - t[hit, None] * torch.nn.functional.normalize(origins[hit], dim=-1)
    agree = (shape.surface_normals(points) * normal[hit]).sum(-1)
    assert (agree > 0.999).float().mean() > 0.99  # all but a few edge hits
    marked = world.is_marked(points, normal[hit])
    assert 0 < marked.float().mean() < 0.5  # every shape has a front patch, a minority of what is seen


def test_a_marked_cube_shows_its_mark_from_the_front_and_none_from_the_back():
    orbit = fixed_orbits([0.0, 180.0], [15.0, 15.0], 1.6, 45.0)
    flat = world.render_prompt("a red cube with a white front", orbit, 32, "albedo", supersample=1)
    white, red = torch.tensor(world.COLOURS["white"]), torch.tensor(world.COLOURS["red"])
    rgb = flat[:, :3].permute(0, 2, 3, 1)
    is_white = (rgb - white).abs().max(-1).values < 1e-6
    is_red = (rgb - red).abs().max(-1).values < 1e-6
    covered = flat[:, 3] > 0.5
    assert is_white[0, 16, 16] and is_white[0].sum() > 0.8 * covered[0].sum()  # the front face fills the view
    assert is_white[1].sum() == 0 and is_red[1].sum() == covered[1].sum()
    # Lit renders scale the mark's albedo; textureless ignores both colours.
    lit = world.render_prompt("a red cube with a white front", orbit, 32, "lambertian", orbit.positions())
    assert float(lit[0, 0, 16, 16]) == pytest.approx(float(lit[0, 2, 16, 16]), rel=1e-5)
    grey = world.render_prompt("a red cube with a white front", orbit, 32, "textureless", orbit.positions())
    plain = world.render_prompt("a red cube", orbit, 32, "textureless", orbit.positions())
    assert torch.equal(grey, plain)
    assert torch.equal(world.render_prompt("a red cube", orbit, 32, "albedo"),
                       world.render("cube", world.COLOURS["red"], orbit, 32, "albedo"))


def test_truth_samples_wear_the_mark_on_its_share_of_the_surface():
    points, colours = world.truth_samples("a blue cube with a yellow front", 6000, seed=0)
    assert np.array_equal(points, world.truth_points("a blue cube with a yellow front", 6000, seed=0))
    yellow = np.all(np.isclose(colours, srgb_to_linear(np.array(world.COLOURS["yellow"]))), axis=1)
    assert yellow.mean() == pytest.approx(1 / 6, abs=0.015)
    assert np.allclose(world.to_unit(points)[yellow, 1], -shapes.SHAPES["cube"].half)
    _, plain = world.truth_samples("a blue cube", 100, seed=0)
    assert np.allclose(plain, world.truth_colour("a blue cube"))
