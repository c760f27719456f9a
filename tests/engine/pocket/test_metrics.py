"""The yardstick: Chamfer, colour error, the mesh rasteriser, R-precision, saturation and brightness on known meshes."""
import math

import numpy as np
import pytest
import torch
from skimage import measure
from skimage.color import hsv2rgb, rgb2hsv

from blender_sds.engine.pocket import janus, metrics, shapes, world
from blender_sds.engine.pocket.cameras import fixed_orbits
from blender_sds.engine.pocket.raster import rasterise
from blender_sds.engine.scene.colour import linear_to_srgb, srgb_to_linear

BOUNDS = {"center": (0.5, -1.0, 2.0), "size": 3.0}


def truth_mesh(prompt, bounds=BOUNDS, resolution=56, colour=None):
    """The prompt's true shape as a marching-cubes mesh with its true (or another) linear colour."""
    _, shape = world.parse_prompt(prompt)
    axis = np.linspace(-shapes.EXTENT - 0.04, shapes.EXTENT + 0.04, resolution)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    level = shapes.SHAPES[shape].level(torch.from_numpy(grid)).numpy().reshape((resolution,) * 3)
    v, f, _, _ = measure.marching_cubes(level, 0.0, spacing=(axis[1] - axis[0],) * 3)
    rgb = world.truth_colour(prompt) if colour is None else np.asarray(colour)
    colours = np.tile(np.append(rgb, 1.0), (len(v), 1))
    return {"vertices": world.to_world(v + axis[0], bounds).astype(np.float32), "faces": f.astype(np.int32),
            "colors": colours.astype(np.float32)}


def test_chamfer_of_the_truth_with_itself_is_near_zero():
    a = world.truth_points("a red torus", 20000, BOUNDS, seed=0)
    assert metrics.chamfer(a, a) == 0.0
    b = world.truth_points("a red torus", 20000, BOUNDS, seed=1)
    assert metrics.chamfer(a, b) / BOUNDS["size"] < 0.005


def test_chamfer_of_a_shifted_copy_is_the_shift():
    u, v = np.meshgrid(np.linspace(0, 1, 60), np.linspace(0, 1, 60))
    plane = np.stack((u.ravel(), v.ravel(), np.zeros(u.size)), 1)
    assert metrics.chamfer(plane, plane + [0, 0, 0.004]) == pytest.approx(0.004, rel=1e-9)


def test_mesh_chamfer_is_a_fraction_of_the_bounds_and_grows_with_a_shift():
    mesh = truth_mesh("a green sphere")
    near = metrics.mesh_chamfer(mesh, "a green sphere", BOUNDS)
    assert near < 0.006
    moved = dict(mesh, vertices=mesh["vertices"] + np.float32([0.3, 0, 0]))  # 10% of the bounds
    far = metrics.mesh_chamfer(moved, "a green sphere", BOUNDS)
    assert 0.04 < far < 0.1
    assert metrics.mesh_chamfer(mesh, "a green cube", BOUNDS) > 3 * near


def test_colour_error_is_the_mean_absolute_linear_difference():
    assert metrics.colour_error(truth_mesh("a yellow cone"), "a yellow cone") < 1e-6
    grey = np.array([0.2, 0.2, 0.2])
    mesh = truth_mesh("a yellow cone", colour=grey)
    expected = np.abs(world.truth_colour("a yellow cone") - grey).mean()
    assert metrics.colour_error(mesh, "a yellow cone") == pytest.approx(expected, rel=1e-5)


def test_rasteriser_matches_the_analytic_renderer():
    # A 12-triangle cube: its big triangles go through the splitting path.
    cube = shapes.SHAPES["cube"]
    corners = cube.triangles.reshape(-1, 3)
    vertices, faces = torch.unique(corners, dim=0, return_inverse=True)
    faces = faces.view(-1, 3)
    orbit = fixed_orbits([35.0, 200.0], [25.0, -5.0], 1.6, 45.0)
    truth = world.render("cube", (1, 1, 1), orbit, 48, "albedo", supersample=1)[:, 3] > 0.5
    for k in range(2):
        cover, attr = rasterise(vertices, faces, vertices, orbit.c2w()[k], float(orbit.focal(48)[k]), 48)
        iou = (cover & truth[k]).sum() / (cover | truth[k]).sum()
        assert iou > 0.97
        # Interpolated positions lie on the cube's surface and face the camera.
        on = attr[cover]
        assert torch.allclose(on.abs().max(dim=-1).values, torch.full((len(on),), cube.half, dtype=on.dtype),
                              atol=1e-9)


def test_rasteriser_keeps_the_nearest_surface():
    # Two parallel squares; the nearer one's attribute must win everywhere they overlap.
    square = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float64) * 0.2
    vertices = torch.cat((square + torch.tensor([0, 0, 0.1]), square - torch.tensor([0, 0, 0.1])))
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    ids = torch.tensor([[1.0]] * 4 + [[2.0]] * 4)
    top = fixed_orbits([0.0], [90.0 - 1e-6], 1.5, 40.0)
    cover, attr = rasterise(vertices, faces, ids, top.c2w()[0], float(top.focal(32)[0]), 32)
    assert cover.sum() > 100 and torch.allclose(attr[cover], torch.ones(1, dtype=attr.dtype))


@pytest.mark.parametrize("prompt", ["a red sphere", "a blue cube", "a green cylinder", "a white cone",
                                    "a yellow torus", "a purple pyramid"])
def test_truth_meshes_are_recognised(prompt):
    judged = metrics.judge(truth_mesh(prompt), prompt, BOUNDS)
    assert judged["shape_ok"] and judged["colour_ok"], judged
    assert judged["chamfer"] < 0.006 and judged["colour_error"] < 1e-6
    assert abs(judged["saturation_difference"]) < 1e-5 and abs(judged["brightness_difference"]) < 1e-5


def test_recognition_reads_shape_and_colour_separately():
    red_cone = truth_mesh("a white cone", colour=world.truth_colour("a red cone"))
    assert metrics.recognise(red_cone, BOUNDS) == ("cone", "red")
    judged = metrics.judge(red_cone, "a white cone", BOUNDS)
    assert judged["shape_ok"] and not judged["colour_ok"]
    assert metrics.r_precision([judged, metrics.judge(truth_mesh("a red cone"), "a red cone", BOUNDS)]) == (1.0, 0.5)


def test_bad_meshes_are_refused_by_name():
    with pytest.raises(ValueError, match="mesh: has no faces"):
        metrics.mesh_chamfer({"vertices": np.zeros((3, 3)), "faces": np.zeros((0, 3))}, "a red cube")
    with pytest.raises(ValueError, match="mesh: missing 'faces'"):
        metrics.judge({"vertices": np.zeros((3, 3))}, "a red cube")
    assert math.isnan(metrics.r_precision([])[0])


@pytest.mark.parametrize("prompt", ["a red cube with a white front", "a white pyramid with a yellow front",
                                    "a blue torus with a green front", "a purple cone with a red front"])
def test_marked_truth_meshes_are_recognised_by_their_body_colour(prompt):
    mesh = janus.truth_mesh(prompt, BOUNDS)
    judged = metrics.judge(mesh, prompt, BOUNDS)
    assert judged["shape_ok"] and judged["colour_ok"], judged
    assert judged["chamfer"] < 0.006 and judged["colour_error"] < 0.006  # blended only along the mark's edge


def test_colour_error_of_a_marked_prompt_counts_a_missing_mark():
    prompt = "a red cube with a white front"
    unmarked = truth_mesh("a red cube")
    white, red = world.truth_colour("a white cube"), world.truth_colour("a red cube")
    expected = np.abs(white - red).mean() / 6  # the front face is a sixth of the cube
    assert metrics.colour_error(unmarked, prompt, bounds=BOUNDS) == pytest.approx(expected, rel=0.05)
    assert metrics.colour_error(unmarked, "a red cube", bounds=BOUNDS) < 1e-6


# -- saturation and brightness -------------------------------------------------------------

PLAIN_COLOURED = ("a red sphere", "a blue cube", "a green cylinder", "a yellow torus", "a purple pyramid")
# Every shape, a white object and two marked ones (one with a white body), for the truth's own reading.
HONEST_POOL = PLAIN_COLOURED + ("a white cone", "a red cube with a white front", "a white pyramid with a yellow front")


def _hsv_edit(mesh, saturation=1.0, value=1.0):
    """The mesh with its colours' HSV saturation and value scaled (clamped to [0, 1]), edited in sRGB as seen."""
    srgb = linear_to_srgb(mesh["colors"][:, :3].astype(np.float64))
    hsv = rgb2hsv(srgb[:, None])
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] * value, 0, 1)
    colours = np.asarray(srgb_to_linear(hsv2rgb(hsv)[:, 0]))
    return dict(mesh, colors=np.concatenate((colours, mesh["colors"][:, 3:]), 1).astype(np.float32))


def _colour_s(prompt):
    rgb = world.albedo_srgb(prompt)
    return (rgb.max() - rgb.min()) / rgb.max()


def test_the_truth_reads_its_own_saturation_and_brightness():
    judged = [metrics.colour_figures(janus.truth_mesh(p, BOUNDS), p, BOUNDS) for p in HONEST_POOL]
    for prompt, figures in zip(HONEST_POOL, judged):
        if world.mark_srgb(prompt) is None:
            # One albedo at every vertex and on every pixel of either render, each averaged over its own
            # pixels, so the silhouettes' differences cannot count: equal but for float32 rounding.
            assert figures["saturation"] == pytest.approx(_colour_s(prompt), abs=1e-5)
            assert figures["truth_saturation"] == pytest.approx(_colour_s(prompt), abs=1e-5)
            assert figures["brightness"] == pytest.approx(world.albedo_srgb(prompt).max(), abs=1e-5)
            assert abs(figures["saturation_difference"]) < 1e-5 and abs(figures["brightness_difference"]) < 1e-5
    # Only the marked meshes can differ from their truth, and only within one marching-cubes cell
    # (0.92/55 = 0.017 bounds sizes, 0.8 px at the eval views' 0.021 per pixel) of an edge: along the
    # mark's border the triangles blend its two colours (any S in [0, 1]: a blend can be grey), and at
    # the cube's and pyramid's edges the mesh's silhouette bevels inward by up to half a cell (0.4 px).
    # In the truth's renders of these two, the pixels within one pixel of the mark's border are 2% of
    # the object's (any S: 0.02), and within one pixel of the silhouette 10% (cube) and 15% (pyramid),
    # whose S sits 0.2-0.75 x |S_mark - S_body| (0.88, 0.83) from the mean: 0.03 and 0.046 for a full
    # pixel, half that for half a pixel. So |S difference| <= 0.02 + 0.023 = 0.043 for each, and over
    # the pool's truth S (4.09 plain coloured + 0.69 + 0.21 = 4.99) the ratio moves by at most
    # 2 x 0.043 / 4.99 = 0.017 < 0.02. V: the same pixels, and V varies less between these colours.
    pooled = metrics.colour_fidelity(judged)
    assert pooled["saturation_ratio"] == pytest.approx(1.0, abs=0.02), pooled
    assert pooled["brightness_ratio"] == pytest.approx(1.0, abs=0.02), pooled


def test_doubled_saturation_reads_as_the_doubled_colours_do():
    # The world's colours are already saturated (S 0.73 .. 0.88), so doubling clamps every one to
    # S = 1 and no edit of them can read more than sum(1) / sum(S) = 1.22 over these five; what
    # the measure must read is exactly that, from the colours alone.
    judged = [metrics.colour_figures(_hsv_edit(truth_mesh(p), saturation=2.0), p, BOUNDS) for p in PLAIN_COLOURED]
    expected = sum(min(2 * _colour_s(p), 1.0) for p in PLAIN_COLOURED) / sum(_colour_s(p) for p in PLAIN_COLOURED)
    pooled = metrics.colour_fidelity(judged)
    assert expected > 1.2
    assert pooled["saturation_ratio"] == pytest.approx(expected, abs=1e-4), pooled
    assert pooled["brightness_ratio"] == pytest.approx(1.0, abs=1e-4)  # HSV keeps V
    assert all(j["saturation_difference"] > 0.1 for j in judged)
    # Halved, nothing clamps: the reading is the factor itself.
    halved = [metrics.colour_figures(_hsv_edit(truth_mesh(p), saturation=0.5), p, BOUNDS) for p in PLAIN_COLOURED]
    assert metrics.colour_fidelity(halved)["saturation_ratio"] == pytest.approx(0.5, abs=1e-4)


def test_halved_brightness_reads_half():
    prompts = ("a red sphere", "a white cone", "a purple pyramid")
    judged = [metrics.colour_figures(_hsv_edit(truth_mesh(p), value=0.5), p, BOUNDS) for p in prompts]
    pooled = metrics.colour_fidelity(judged)
    assert pooled["brightness_ratio"] == pytest.approx(0.5, abs=1e-4), pooled
    assert pooled["saturation_ratio"] == pytest.approx(1.0, abs=1e-4)  # HSV keeps S


def test_a_white_truth_neither_divides_by_zero_nor_dominates():
    # A white cone tinted pink (sRGB (0.9, 0.8, 0.8): S 1/9): alone, a ratio has nothing to divide by.
    tint = np.asarray(srgb_to_linear(np.array([0.9, 0.8, 0.8])))
    pink = metrics.colour_figures(truth_mesh("a white cone", colour=tint), "a white cone", BOUNDS)
    assert pink["truth_saturation"] == 0.0 and pink["saturation"] == pytest.approx(1 / 9, abs=1e-5)
    alone = metrics.colour_fidelity([pink])
    assert math.isnan(alone["saturation_ratio"]) and alone["brightness_ratio"] == pytest.approx(1.0, abs=1e-5)
    # Beside a faithful red sphere it adds its own S to the results' sum, nothing more.
    red = metrics.colour_figures(truth_mesh("a red sphere"), "a red sphere", BOUNDS)
    pooled = metrics.colour_fidelity([pink, red])
    assert pooled["saturation_ratio"] == pytest.approx((1 / 9 + _colour_s("a red sphere")) / _colour_s("a red sphere"),
                                                       abs=1e-4)
    # Assets without figures (a failed run, a mesh without colours) are not counted; none at all: NaN.
    failed = {"prompt": "a blue torus", "saturation": None, "truth_saturation": None}
    uncoloured = metrics.judge({k: v for k, v in truth_mesh("a red sphere").items() if k != "colors"},
                               "a red sphere", BOUNDS)
    assert math.isnan(uncoloured["saturation"]) and uncoloured["truth_saturation"] == pytest.approx(0.882, abs=1e-3)
    assert metrics.colour_fidelity([red, failed, uncoloured]) == pytest.approx(metrics.colour_fidelity([red]))
    assert all(math.isnan(v) for v in metrics.colour_fidelity([]).values())
