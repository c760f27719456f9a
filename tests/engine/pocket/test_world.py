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
