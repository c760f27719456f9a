"""Plain helpers for the pocket-teacher tests (tests/engine/guidance): a tiny pocket job,
engine-style cameras at given angles, and the teacher's noise prediction by the book."""
import torch

from blender_sds.engine.pocket import dataset, world
from blender_sds.engine.pocket.cameras import fixed_orbits
from blender_sds.engine.scene.views import ViewBatch
from blender_sds.job import validate_job

SIZE = 12


def tiny_job(**extra):
    """A pocket job at SIZE px; its teacher is the camera-blind one unless `guidance` says pose_matched."""
    raw = {"version": 1, "prompt": "a red cube", "guidance": {"kind": "pocket", "pose_matched": False},
           "render": {"resolution": SIZE}}
    for key, value in extra.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return validate_job(raw)


def views_for(azimuth, elevation, background=None, distance=1.75, fovy=55.0, bounds_size=2.0):
    """Engine-style cameras (world units, default bounds) at the given angles, distances and fields of view."""
    orbit = fixed_orbits(azimuth, elevation, 1.0, 50.0)
    b = len(orbit)
    orbit.eye *= torch.as_tensor(distance, dtype=torch.float64).expand(b)[:, None]
    orbit.fovy = torch.as_tensor(fovy, dtype=torch.float64).expand(b).clone()
    c2w = orbit.c2w().float()
    c2w[:, :3, 3] *= bounds_size
    f = orbit.focal(SIZE).float()
    half = torch.full((b,), SIZE / 2)
    return ViewBatch(c2w=c2w, fx=f, fy=f.clone(), cx=half, cy=half.clone(), width=SIZE, height=SIZE,
                     azimuth=orbit.azimuth.float(), elevation=orbit.elevation.float(), background=background)


def composites(data: dataset.ViewSet, background: torch.Tensor) -> torch.Tensor:
    """Every data image over one background, in [-1,1], float64: the x_i of the definition."""
    n = len(data)
    rgba = torch.cat((data.colour.view(n, 3, SIZE, SIZE), data.alpha.view(n, 1, SIZE, SIZE)), 1).double()
    return 2 * world.composite(rgba, background.double()) - 1


def brute_force_eps(z_t, alpha_bar, data, background, keep=None):
    """eps_hat by the book, one image at a time in float64."""
    x = composites(data, background)
    keep = range(len(data)) if keep is None else [i for i in range(len(data)) if keep[i]]
    prior = data.log_prior.double().exp()
    likelihood = torch.stack([torch.exp(-((z_t - alpha_bar.sqrt() * x[i]) ** 2).sum() / (2 * (1 - alpha_bar)))
                              for i in keep])
    weights = prior[list(keep)] * likelihood / (prior[list(keep)] * likelihood).sum()
    x0 = sum(w * x[i] for w, i in zip(weights, keep))
    return (z_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
