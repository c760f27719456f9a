"""Field -> mesh: analytic density fields with known surfaces, and the sRGB/linear curve."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blender_sds.engine.scene.colour import linear_to_srgb, srgb_to_linear
from blender_sds.engine.scene import isosurface
from blender_sds.engine.scene.isosurface import AUTO_THRESHOLDS, MeshError, density_grid, extract_mesh

CENTER = (0.3, -0.2, 1.0)
SIZE = 2.0
RES = 48
CELL = SIZE / RES


def ball(center=CENTER, radius=0.5, peak=20.0, sharpness=40.0):
    """Smooth ball: `peak` inside, 0 outside, peak/2 exactly on the sphere of `radius`."""
    c = torch.tensor(center, dtype=torch.float32)

    def density(points):
        distance = (points - c.to(points.device)).norm(dim=-1)
        return peak * torch.sigmoid((radius - distance) * sharpness)

    return density


def grey(points):
    return torch.full_like(points, 0.5)


def signed_volume(vertices, faces):
    v = vertices.astype(np.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def assert_closed(faces):
    """Watertight: every undirected edge belongs to exactly two faces, once in each direction."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    _, counts = np.unique(undirected, axis=0, return_counts=True)
    assert (counts == 2).all(), f"{int((counts != 2).sum())} edges not shared by exactly two faces"
    # Consistent winding: each directed edge appears once (its twin runs the other way).
    _, directed_counts = np.unique(directed, axis=0, return_counts=True)
    assert (directed_counts == 1).all()


def test_sphere_lies_on_its_radius_with_outward_winding():
    mesh = extract_mesh(ball(), grey, CENTER, SIZE, resolution=RES)
    vertices, faces = mesh["vertices"], mesh["faces"]
    assert vertices.dtype == np.float32 and vertices.flags["C_CONTIGUOUS"] and vertices.shape[1] == 3
    assert faces.dtype == np.int32 and faces.flags["C_CONTIGUOUS"] and faces.shape[1] == 3
    assert mesh["threshold"] == 10.0

    radii = np.linalg.norm(vertices - np.array(CENTER), axis=1)
    # Far under a voxel: the density is smooth, so linear interpolation is nearly exact.
    assert np.abs(radii - 0.5).max() < 0.1 * CELL
    # Exact mapping from grid to world: a half-cell slip would move the centre by 0.02.
    np.testing.assert_allclose(vertices.mean(axis=0), CENTER, atol=2e-3)

    volume = signed_volume(vertices, faces)
    assert volume == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.02)
    v = vertices.astype(np.float64)
    normals = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    outward = v[faces].mean(axis=1) - np.array(CENTER)
    assert (np.einsum("ij,ij->i", normals, outward) > 0).all()
    assert_closed(faces)


def test_cube_has_its_faces_where_the_density_says():
    half = 0.4
    c = torch.tensor(CENTER)

    def box(points):
        outside = ((points - c).abs() - half).amax(dim=-1)
        return 20.0 * torch.sigmoid(-outside * 60.0)

    mesh = extract_mesh(box, grey, CENTER, SIZE, resolution=RES)
    vertices = mesh["vertices"]
    np.testing.assert_allclose(vertices.min(axis=0), np.array(CENTER) - half, atol=CELL / 2)
    np.testing.assert_allclose(vertices.max(axis=0), np.array(CENTER) + half, atol=CELL / 2)
    # Marching cubes only bevels the edges, so the volume stays within a few percent.
    assert signed_volume(vertices, mesh["faces"]) == pytest.approx((2 * half) ** 3, rel=0.04)
    assert_closed(mesh["faces"])


def test_small_floaters_are_dropped_unless_min_component_is_zero():
    body = ball()
    # One floater far away, one in a corner of the body's bounding box (not touching it).
    floaters = [tuple(c + d for c, d in zip(CENTER, offset)) for offset in [(0.8, 0.7, 0.7), (0.4, 0.4, 0.4)]]
    blobs = [ball(center=at, radius=0.08) for at in floaters]

    def field(points):
        return torch.stack([body(points)] + [blob(points) for blob in blobs]).amax(dim=0)

    def near(mesh, at):
        return (np.linalg.norm(mesh["vertices"] - np.array(at), axis=1) < 0.15).sum()

    cleaned = extract_mesh(field, grey, CENTER, SIZE, resolution=RES, min_component=0.05)
    assert all(near(cleaned, at) == 0 for at in floaters)
    assert signed_volume(cleaned["vertices"], cleaned["faces"]) == pytest.approx(4 / 3 * math.pi * 0.125, rel=0.02)

    kept = extract_mesh(field, grey, CENTER, SIZE, resolution=RES, min_component=0.0)
    assert all(near(kept, at) > 20 for at in floaters)
    assert_closed(kept["faces"])


def test_colours_are_linear_rgba_queried_at_the_vertices():
    mesh = extract_mesh(ball(), grey, CENTER, SIZE, resolution=24)
    colours = mesh["colors"]
    assert colours.dtype == np.float32 and colours.shape == (len(mesh["vertices"]), 4)
    np.testing.assert_allclose(colours[:, :3], 0.2140, atol=1e-4)
    np.testing.assert_array_equal(colours[:, 3], 1.0)

    def by_position(points):  # sRGB red = x mapped into [0,1] across the bounds
        x = (points[:, :1] - (CENTER[0] - 1.0)) / SIZE
        return torch.cat([x, 1 - x, torch.zeros_like(x)], dim=1)

    mesh = extract_mesh(ball(), by_position, CENTER, SIZE, resolution=24)
    x = (mesh["vertices"][:, 0].astype(np.float64) - (CENTER[0] - 1.0)) / SIZE
    read_at = linear_to_srgb(mesh["colors"][:, 0].astype(np.float64))
    np.testing.assert_allclose(mesh["colors"][:, 1], srgb_to_linear(1 - read_at), atol=1e-5)
    # Read one cell inward from each vertex: never further, and towards the inside.
    np.testing.assert_allclose(read_at, x, atol=isosurface.COLOUR_DEPTH * (SIZE / 24) / SIZE + 1e-5)
    offset = (mesh["vertices"][:, 0] - CENTER[0]) / 0.5  # +1 on the ball's +x pole, -1 on its -x pole
    poles = np.abs(offset) > 0.8
    assert np.mean((read_at - x)[poles] * offset[poles]) < -0.5 * (SIZE / 24) / SIZE


@pytest.mark.parametrize("peak, expected", [(12.0, 10.0), (7.0, 5.0)])
def test_auto_threshold_falls_back_for_a_faint_object(peak, expected):
    mesh = extract_mesh(ball(peak=peak), grey, CENTER, SIZE, resolution=24)
    assert mesh["threshold"] == expected
    assert len(mesh["faces"]) > 100


def test_no_surface_raises_with_the_thresholds_tried():
    with pytest.raises(MeshError) as info:
        extract_mesh(ball(peak=2.0), grey, CENTER, SIZE, resolution=16)
    message = str(info.value)
    assert all(f"{t:g}" in message for t in AUTO_THRESHOLDS)
    assert "mesh.threshold" in message and "max 2" in message

    with pytest.raises(MeshError, match=r"mesh\.threshold 60 .*max 20"):
        extract_mesh(ball(), grey, CENTER, SIZE, resolution=16, threshold=60)
    # A number is used alone: 2 finds the faint ball that "auto" could not.
    assert extract_mesh(ball(peak=2.0), grey, CENTER, SIZE, resolution=16, threshold=1)["threshold"] == 1.0


def test_surface_touching_the_bounds_is_closed():
    mesh = extract_mesh(ball(radius=0.9 * SIZE), grey, CENTER, SIZE, resolution=16)
    assert_closed(mesh["faces"])
    low, high = np.array(CENTER) - SIZE / 2, np.array(CENTER) + SIZE / 2
    assert (mesh["vertices"] >= low - 1e-5).all() and (mesh["vertices"] <= high + 1e-5).all()
    # The bounds box itself is the surface: its volume.
    assert signed_volume(mesh["vertices"], mesh["faces"]) == pytest.approx(SIZE**3, rel=0.02)


def test_density_grid_samples_cell_centres_in_xyz_order():
    resolution = 5
    grid = density_grid(lambda p: p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2], CENTER, SIZE, resolution, "cpu", chunk=7)
    assert grid.shape == (5, 5, 5) and grid.dtype == torch.float32 and grid.device.type == "cpu"
    centres = [np.array(CENTER[axis]) - SIZE / 2 + (np.arange(5) + 0.5) * SIZE / 5 for axis in range(3)]
    x, y, z = np.meshgrid(*centres, indexing="ij")
    np.testing.assert_allclose(grid.numpy(), x + 10 * y + 100 * z, atol=1e-4)


def test_bad_inputs_name_the_setting():
    with pytest.raises(ValueError, match="mesh.threshold"):
        extract_mesh(ball(), grey, CENTER, SIZE, threshold="high")
    with pytest.raises(ValueError, match="mesh.threshold"):
        extract_mesh(ball(), grey, CENTER, SIZE, threshold=-1.0)
    with pytest.raises(ValueError, match="mesh.min_component"):
        extract_mesh(ball(), grey, CENTER, SIZE, min_component=2)
    with pytest.raises(ValueError, match="mesh.resolution"):
        extract_mesh(ball(), grey, CENTER, SIZE, resolution=1)
    with pytest.raises(ValueError, match="bounds.size"):
        extract_mesh(ball(), grey, CENTER, 0.0)
    with pytest.raises(ValueError, match="bounds.center"):
        extract_mesh(ball(), grey, (0.0, 1.0), SIZE)
    with pytest.raises(ValueError, match="density_fn returned shape"):
        extract_mesh(lambda p: p, grey, CENTER, SIZE, resolution=8)
    with pytest.raises(ValueError, match="albedo_fn returned shape"):
        extract_mesh(ball(), lambda p: p[:, 0], CENTER, SIZE, resolution=8)
    with pytest.raises(MeshError, match="non-finite"):
        extract_mesh(lambda p: torch.full_like(p[:, 0], math.nan), grey, CENTER, SIZE, resolution=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fields_on_cuda_give_the_same_mesh():
    on_cpu = extract_mesh(ball(), grey, CENTER, SIZE, resolution=RES)
    on_gpu = extract_mesh(ball(), lambda p: (assert_on_cuda(p), grey(p))[1], CENTER, SIZE, resolution=RES, device="cuda")
    assert on_gpu["faces"].shape == on_cpu["faces"].shape
    np.testing.assert_allclose(on_gpu["vertices"], on_cpu["vertices"], atol=1e-4)
    np.testing.assert_allclose(on_gpu["colors"], on_cpu["colors"], atol=1e-6)


def assert_on_cuda(points):
    assert points.device.type == "cuda"


# --- sRGB <-> linear ---------------------------------------------------------------------

KNOWN = [(0.0, 0.0), (0.04045, 0.04045 / 12.92), (0.5, 0.21404114), (0.73535698, 0.5), (1.0, 1.0)]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_srgb_linear_known_values_and_round_trip(kind):
    srgb = np.array([s for s, _ in KNOWN])
    linear = np.array([lin for _, lin in KNOWN])
    as_kind = (lambda a: torch.tensor(a)) if kind == "torch" else (lambda a: a)
    to_np = (lambda t: t.numpy()) if kind == "torch" else (lambda a: a)

    np.testing.assert_allclose(to_np(srgb_to_linear(as_kind(srgb))), linear, atol=1e-7)
    np.testing.assert_allclose(to_np(linear_to_srgb(as_kind(linear))), srgb, atol=1e-7)

    ramp = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(to_np(linear_to_srgb(srgb_to_linear(as_kind(ramp)))), ramp, atol=1e-9)
    np.testing.assert_allclose(to_np(srgb_to_linear(as_kind(np.array([-0.5, 2.0])))), [0.0, 1.0])

    single = as_kind(ramp.astype(np.float32))
    assert to_np(srgb_to_linear(single)).dtype == np.float32


def test_srgb_linear_gradients_are_finite_at_the_ends():
    x = torch.tensor([0.0, 0.002, 0.5, 1.0], requires_grad=True)
    (srgb_to_linear(x).sum() + linear_to_srgb(x).sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_sealed_cavities_are_filled_so_only_the_outer_surface_remains():
    """A hollow ball (a shell with an empty pocket inside) gives one outer surface, no inner shell."""
    center, size, r_out, r_in = np.array([0.1, -0.2, 1.0]), 2.0, 0.6, 0.35

    def hollow(p):
        d = (p - torch.as_tensor(center, dtype=p.dtype, device=p.device)).norm(dim=-1)
        return torch.where((d < r_out) & (d > r_in), 50.0, 0.0)

    mesh = extract_mesh(hollow, lambda p: torch.full_like(p, 0.5), center, size, resolution=48, threshold=25)
    radius = np.linalg.norm(mesh["vertices"] - center, axis=1)
    assert radius.min() > r_out - 2 * size / 48, "an inner shell was left in the mesh"
    tri = mesh["vertices"][mesh["faces"]].astype(np.float64)
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert abs(volume - 4 / 3 * np.pi * r_out ** 3) / (4 / 3 * np.pi * r_out ** 3) < 0.05
