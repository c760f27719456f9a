"""Cameras follow docs/ARCHITECTURE.md "Conventions" exactly: c2w in Blender's world (camera looks down -Z, +Y up),
pixel intrinsics with the origin at the top-left corner and y down."""
import math

import numpy as np
import torch

from blender_sds import scenes
from blender_sds.engine.scene.cameras import CameraSampler, angles_of, fixed_views, ray_bundle, square_crop
from blender_sds.engine.scene.views import ViewBatch
from blender_sds.engine.settings import CameraSettings, Settings
from blender_sds.job import validate_job


def project(camera: dict, points: np.ndarray) -> np.ndarray:
    """Pinhole projection written from docs/ARCHITECTURE.md's definitions, independent of the engine."""
    c2w = np.asarray(camera["c2w"])
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera (rotation is orthonormal)
    depth = -cam[:, 2]
    return np.stack([camera["cx"] + camera["fx"] * cam[:, 0] / depth,
                     camera["cy"] - camera["fy"] * cam[:, 1] / depth], -1)


def batch_of(camera: dict) -> ViewBatch:
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return ViewBatch(c2w=torch.tensor([camera["c2w"]], dtype=torch.float32), fx=t(camera["fx"]),
                     fy=t(camera["fy"]), cx=t(camera["cx"]), cy=t(camera["cy"]), width=camera["width"],
                     height=camera["height"], azimuth=t(0), elevation=t(0))


def test_rays_pass_through_the_pixels_their_points_project_to():
    rng = np.random.default_rng(0)
    for cam in scenes.orbit_cameras(5, 40):
        cam = dict(cam, width=40, height=24, fx=31.0, fy=47.0, cx=17.5, cy=13.0)  # anisotropic, off-centre
        origins, dirs = ray_bundle(batch_of(cam))
        rows, cols = rng.integers(0, 24, 20), rng.integers(0, 40, 20)
        points = (origins[0, rows, cols] + 2.7 * dirs[0, rows, cols]).double().numpy()
        uv = project(cam, points)
        np.testing.assert_allclose(uv, np.stack([cols + 0.5, rows + 0.5], -1), atol=1e-3)


def test_azimuth_zero_is_blenders_front_view_and_angles_round_trip():
    views = fixed_views((0.0, 0.0, 1.0), 2.0, (0.0, 90.0, 180.0), 30.0, 16)
    eye = views.c2w[:, :3, 3]
    assert eye[0, 1] < -1 and abs(eye[0, 0]) < 1e-5  # azimuth 0: on the -Y side
    assert eye[1, 0] > 1  # azimuth 90: counter-clockwise from above, on the +X side
    forward = -views.c2w[:, :3, 2]
    to_center = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0]) - eye, dim=-1)
    assert torch.allclose(forward, to_center, atol=1e-5)
    assert (views.c2w[:, 2, 1] > 0).all()  # camera +Y points up in the world
    az, el = angles_of(views.c2w, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(torch.remainder(az + 360, 360), torch.tensor([0.0, 90.0, 180.0]), atol=1e-3)
    assert torch.allclose(el, torch.full((3,), 30.0), atol=1e-3)


def test_square_crop_keeps_the_centre_of_a_landscape_frame():
    cam = {"width": 200, "height": 100, "fx": 150.0, "fy": 150.0, "cx": 100.0, "cy": 50.0}
    fx, fy, cx, cy = square_crop(cam, 64)
    assert (fx, fy, cx, cy) == (96.0, 96.0, 32.0, 32.0)
    shifted = dict(cam, cx=120.0)
    assert square_crop(shifted, 64)[2] == (120 - 50) * 0.64


def job_with_rig(mode: str) -> CameraSettings:
    return cameras_of({"version": 1, "prompt": "a red cube", "seed": 1,
                       "guidance": {"kind": "stable-diffusion", "model": "org/model"},
                       "render": {"resolution": 32},
                       "cameras": {"mode": mode, "rig": scenes.orbit_cameras(3, 64), "rig_fraction": 0.5}})


def cameras_of(raw: dict) -> CameraSettings:
    """The camera section the sampler is built from, of a job as written."""
    return Settings.from_job(validate_job(raw)).cameras


def test_orbit_rig_and_mixed_sampling():
    g = torch.Generator().manual_seed(0)
    orbit = CameraSampler(job_with_rig("orbit"), torch.device("cpu"), g).sample(64)
    assert (orbit.view_index == -1).all()
    dist = (orbit.c2w[:, :3, 3] - torch.tensor([0.0, 0.0, 0.0])).norm(dim=-1) / 2.0
    assert dist.min() > 1.4 and dist.max() < 2.1  # default distance [1.5, 2.0] x size, small perturbation
    assert orbit.elevation.min() > -12 and orbit.elevation.max() < 47
    rig = CameraSampler(job_with_rig("rig"), torch.device("cpu"), g, jitter=False).sample(16)
    assert set(rig.view_index.tolist()) <= {0, 1, 2}
    for i, c2w in zip(rig.view_index.tolist(), rig.c2w):
        np.testing.assert_allclose(c2w.numpy(), np.asarray(scenes.orbit_cameras(3, 64)[i]["c2w"]), atol=1e-5)
    jittered = CameraSampler(job_with_rig("rig"), torch.device("cpu"), g).sample(16)
    rot = jittered.c2w[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-5)  # still rigid
    mixed = CameraSampler(job_with_rig("mixed"), torch.device("cpu"), g).sample(64)
    from_rig = (mixed.view_index >= 0).float().mean()
    assert 0.2 < from_rig < 0.8
    assert math.isclose(float(mixed.fx[mixed.view_index >= 0][0]), square_crop(scenes.orbit_cameras(3, 64)[0], 32)[0],
                        rel_tol=1e-5)


def test_orbit_look_at_jitter_follows_the_job():
    def centre_offsets(target: float) -> np.ndarray:
        cameras = cameras_of({"version": 1, "prompt": "a cat", "guidance": {"kind": "pixel", "model": "org/m"},
                              "bounds": {"center": [1.0, 2.0, 0.5], "size": 3.0},
                              "cameras": {"jitter": {"target": target}}})
        views = CameraSampler(cameras, torch.device("cpu"), torch.Generator().manual_seed(0)).sample(64)
        offsets = []
        for k in range(views.size):
            cam = {"c2w": views.c2w[k].double().numpy(), "fx": float(views.fx[k]), "fy": float(views.fy[k]),
                   "cx": float(views.cx[k]), "cy": float(views.cy[k])}
            offsets.append(project(cam, np.array([[1.0, 2.0, 0.5]]))[0] - [cam["cx"], cam["cy"]])
        return np.abs(np.array(offsets))

    assert centre_offsets(0.0).max() < 1e-3  # the bounds centre is the image centre
    assert centre_offsets(0.05).max() > 1.0  # the default shakes it by pixels


def test_the_validators_sees_bounds_never_refuses_a_camera_whose_rays_meet_the_bounds():
    """job.sees_bounds (standard library, no renderer) against the renderer's own rays: every
    camera one of whose rays meets the cube passes; of those it refuses, no ray does."""
    from blender_sds.engine.scene.cameras import look_at
    from blender_sds.engine.scene.renderer import ray_box
    from blender_sds.job import sees_bounds

    g = torch.Generator().manual_seed(5)
    bounds = {"center": [0.3, -0.2, 1.0], "size": 2.0}
    center = torch.tensor(bounds["center"])
    eye = center + 4 * (torch.rand(200, 3, generator=g) - 0.5) * 2  # some inside the cube
    target = eye + torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    c2w = look_at(eye, target)
    refused = seen = 0
    for i in range(200):
        width, height = (24, 16) if i % 2 else (16, 16)
        focal = float(torch.empty(()).uniform_(6.0, 40.0, generator=g))
        camera = {"c2w": c2w[i].tolist(), "width": width, "height": height, "fx": focal, "fy": focal,
                  "cx": width / 2, "cy": height / 2}
        fx, fy, cx, cy = square_crop(camera, 16)
        one = lambda v: torch.tensor([v], dtype=torch.float32)  # noqa: E731
        views = ViewBatch(c2w=c2w[i:i + 1], fx=one(fx), fy=one(fy), cx=one(cx), cy=one(cy), width=16, height=16,
                          azimuth=one(0.0), elevation=one(0.0))
        origins, dirs = ray_bundle(views)
        near, far = ray_box(origins.reshape(-1, 3), dirs.reshape(-1, 3), center, bounds["size"])
        hits = bool((far > near).any())
        sees = sees_bounds(camera, bounds)
        assert sees or not hits, f"camera {i} meets the bounds but was refused"
        refused += not sees
        seen += hits
    assert refused > 25 and seen > 25  # both kinds were drawn: the check can fail either way
