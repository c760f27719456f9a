"""A mesh for editing: the face budget keeps shape and colour, smoothing flattens bumps without
shrinking, and both do nothing when asked for nothing. Analytic fields, known surfaces."""
from __future__ import annotations

import math

import igl
import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from blender_sds.engine.bench.smoothing import remembered  # both meshes below sample one grid
from blender_sds.engine.pocket import metrics, shapes, world
from blender_sds.engine.scene import remesh
from blender_sds.engine.scene.isosurface import extract_mesh
from blender_sds.job import DEFAULT_SMOOTH

BOUNDS = {"center": (0.0, 0.0, 0.0), "size": 2.0}  # the pocket world's default bounds


def grey(points):
    return torch.full_like(points, 0.5)


def signed_volume(vertices, faces):
    v = vertices.astype(np.float64)
    return float(np.einsum("ij,ij->i", v[faces[:, 0]], np.cross(v[faces[:, 1]], v[faces[:, 2]])).sum() / 6.0)


def distances(points, vertices, faces):
    """Exact distance from each point to a triangle mesh's surface (not to sampled points:
    sample-to-sample Chamfer has a floor of half the sample spacing, near the 0.5% asked for)."""
    return np.sqrt(igl.point_mesh_squared_distance(points, vertices.astype(np.float64), faces.astype(np.int64))[0])


def surface_chamfer(a: dict, b: dict, n: int = 20000) -> float:
    """Symmetric mean surface-to-surface distance between two meshes (world units)."""
    pa, _ = metrics.sample_surface(a, n, seed=1)
    pb, _ = metrics.sample_surface(b, n, seed=2)
    return 0.5 * float(distances(pa, b["vertices"], b["faces"]).mean() + distances(pb, a["vertices"], a["faces"]).mean())


BOX_AT = torch.tensor([0.3, 0.0, 0.25])


def lumpy(points):
    """A ball and a box joined (curved, flat, a crease where they meet) under small bumps."""
    x, y, z = points.unbind(-1)
    ball = 0.55 - points.norm(dim=-1)
    box = 0.4 - (points - BOX_AT).abs().amax(dim=-1)
    bumps = 0.01 * torch.sin(23 * x) * torch.sin(19 * y) * torch.sin(17 * z)
    return 40.0 * torch.sigmoid((torch.maximum(ball, box) + bumps) * 60.0)


def ramp(points):
    """sRGB red along x, green along z, across the bounds."""
    return torch.stack([(points[:, 0] + 1) / 2, (points[:, 2] + 1) / 2, torch.full_like(points[:, 0], 0.3)], -1)


def test_a_face_budget_keeps_the_shape_and_the_colours():
    field = remembered(lumpy)
    full = extract_mesh(field, ramp, (0, 0, 0), 2.0, resolution=80)
    assert len(full["faces"]) > 20000
    budget = extract_mesh(field, ramp, (0, 0, 0), 2.0, resolution=80, target_faces=5000)
    vertices, faces, colours = budget["vertices"], budget["faces"], budget["colors"]
    assert 4000 < len(faces) <= 5000
    assert vertices.dtype == np.float32 and faces.dtype == np.int32 and colours.shape == (len(vertices), 4)
    assert np.unique(faces).size == len(vertices)  # no vertex left that no face uses
    assert budget["threshold"] == full["threshold"]

    assert surface_chamfer(budget, full) <= 0.005 * 2.0
    # Same winding, same solid: the decimated surface still faces outwards.
    assert signed_volume(vertices, faces) == pytest.approx(signed_volume(full["vertices"], full["faces"]), rel=0.01)

    nearest = cKDTree(full["vertices"]).query(vertices)[1]
    error = np.abs(colours[:, :3] - full["colors"][nearest, :3]).mean()
    assert error <= 0.02
    # The yardstick can tell: colours that do not belong to their vertices miss by far more.
    shuffled = np.random.default_rng(0).permutation(len(vertices))
    assert np.abs(colours[shuffled, :3] - full["colors"][nearest, :3]).mean() > 0.05


def bumpy_cube(wavelength_cells: float, amplitude_cells: float, resolution: int):
    """The pocket cube (in BOUNDS) with bumps a few grid cells wide on its surface, as a trained field has."""
    cube = shapes.SHAPES["cube"]
    k = 2 * math.pi * resolution / wavelength_cells  # per unit (bounds-size) length

    def density(points):
        u = points.double() / BOUNDS["size"]
        x, y, z = u.unbind(-1)
        bumps = torch.sin(k * x) * torch.sin(k * y) + torch.sin(k * y) * torch.sin(k * z) + torch.sin(k * z) * torch.sin(k * x)
        level = cube.level(u) + amplitude_cells / resolution * bumps
        return (20.0 * torch.sigmoid(-120.0 * level)).float()

    return density


def chamfer_to_cube(mesh: dict) -> float:
    """Exact symmetric surface distance to the true cube, as a fraction of the bounds size."""
    triangles = shapes.SHAPES["cube"].triangles.numpy() * BOUNDS["size"]
    truth_v, truth_f = triangles.reshape(-1, 3), np.arange(3 * len(triangles)).reshape(-1, 3)
    on_mesh, _ = metrics.sample_surface(mesh, 20000, seed=1)
    on_truth = world.truth_points("a red cube", 20000, BOUNDS, seed=2)
    return 0.5 * float(distances(on_mesh, truth_v, truth_f).mean()
                       + distances(on_truth, mesh["vertices"], mesh["faces"]).mean()) / BOUNDS["size"]


def test_default_smoothing_halves_the_bumps_on_flat_faces_and_keeps_the_cube():
    field = remembered(bumpy_cube(wavelength_cells=4, amplitude_cells=0.3, resolution=64))
    raw = extract_mesh(field, grey, BOUNDS["center"], BOUNDS["size"], resolution=64)
    smoothed = extract_mesh(field, grey, BOUNDS["center"], BOUNDS["size"], resolution=64, smooth=DEFAULT_SMOOTH)
    np.testing.assert_array_equal(smoothed["faces"], raw["faces"])  # smoothing moves vertices only

    before = metrics.flat_bumpiness(raw, "a red cube", BOUNDS)
    after = metrics.flat_bumpiness(smoothed, "a red cube", BOUNDS)
    assert before > 5.0, before  # the bumps are there to remove
    assert after <= 0.5 * before, (before, after)
    assert metrics.flat_deviation(smoothed, "a red cube", BOUNDS) < metrics.flat_deviation(raw, "a red cube", BOUNDS)
    assert chamfer_to_cube(smoothed) <= chamfer_to_cube(raw)

    # The measure sees a flat face as flat, and refuses shapes without flat faces.
    clean = extract_mesh(bumpy_cube(4, 0.0, 64), grey, BOUNDS["center"], BOUNDS["size"], resolution=64)
    assert metrics.flat_bumpiness(clean, "a red cube", BOUNDS) < 0.01
    with pytest.raises(ValueError, match="flat faces"):
        metrics.flat_bumpiness(clean, "a red sphere", BOUNDS)


def ball(points):
    return 20.0 * torch.sigmoid((0.5 - points.norm(dim=-1)) * 40.0)


def test_nothing_asked_changes_nothing_and_smoothing_keeps_the_volume():
    plain = extract_mesh(ball, grey, (0, 0, 0), 2.0, resolution=40)
    v, f = plain["vertices"], plain["faces"]
    zeros = extract_mesh(ball, grey, (0, 0, 0), 2.0, resolution=40, smooth=0, target_faces=0)
    roomy = extract_mesh(ball, grey, (0, 0, 0), 2.0, resolution=40, target_faces=len(f))
    for other in (zeros, roomy):
        for key in ("vertices", "faces", "colors"):
            np.testing.assert_array_equal(other[key], plain[key])
    np.testing.assert_array_equal(remesh.smooth(v, f, 0), v)
    assert all(np.array_equal(a, b) for a, b in zip(remesh.decimate(v, f, 0), (v, f)))

    volume = signed_volume(v, f)
    for iterations in (DEFAULT_SMOOTH, 1000):  # the most mesh.smooth allows
        smoothed = remesh.smooth(v, f, iterations)
        assert smoothed.dtype == np.float32 and smoothed.shape == v.shape
        assert signed_volume(smoothed, f) == pytest.approx(volume, rel=0.03)
    # Plain Laplacian smoothing, which Taubin's inflate step corrects, shrinks it many times more.
    laplacian = trimesh.smoothing.filter_laplacian(trimesh.Trimesh(v, f, process=False), lamb=0.6307,
                                                   iterations=100, volume_constraint=False)
    assert signed_volume(np.asarray(laplacian.vertices), f) < 0.9 * volume

    with pytest.raises(ValueError, match="mesh.smooth"):
        extract_mesh(ball, grey, (0, 0, 0), 2.0, resolution=16, smooth=-1)
    with pytest.raises(ValueError, match="mesh.target_faces"):
        extract_mesh(ball, grey, (0, 0, 0), 2.0, resolution=16, target_faces=1.5)
