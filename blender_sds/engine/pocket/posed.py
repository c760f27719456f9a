"""Pose-matched data: the pocket world rendered at each judged camera, for `guidance.pose_matched`.

The camera-blind teacher can only answer a render with a neighbour from its finite data,
in whatever pose that neighbour was drawn; a model trained on millions of images answers
in the render's own pose. Rendering the data at the judged camera gives the teacher that
property outright (the ideal of camera-conditioned models such as Zero-1-to-3 and
MVDream), so what is left of a result's error is the engine's, not the teacher's
memorisation (docs/QUALITY.md). Lights and shadings stay random, drawn per call from the
teacher's generator, so the teacher still does not know how the engine lit its render.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..scene.views import ViewBatch
from . import world
from .cameras import Orbit
from .dataset import ALBEDO_FRACTION, ViewSet, one_thread

CONDITIONAL_PER_VIEW = 8  # renders of the prompt's object at each judged camera
WORLD_PER_VIEW = 1  # renders of every object of the world at each judged camera (2 made this part of a step 1.5x)


def judged_orbit(views: ViewBatch, center: torch.Tensor, size: float) -> Orbit:
    """The judged cameras in the world's unit coordinates (principal point assumed central)."""
    c2w = views.c2w.detach().cpu().double()
    eye = (c2w[:, :3, 3] - center.detach().cpu().double()) / size
    fovy = torch.rad2deg(2 * torch.atan(0.5 * views.height / views.fy.detach().cpu().double()))
    return Orbit(eye, eye - c2w[:, :3, 2], c2w[:, :3, 1], fovy)


def _draw(orbit: Orbit, per_view: int, generator: torch.Generator):
    """Each camera repeated per_view times (render i*per_view + c), with a random light and shading per copy."""
    owner = torch.arange(len(orbit)).repeat_interleave(per_view)
    cameras = orbit.subset(owner)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    lights = world.random_lights(cameras, seed)
    flat = torch.rand(len(owner), generator=generator) < ALBEDO_FRACTION
    return cameras, lights, ["albedo" if f else "lambertian" for f in flat.tolist()], owner


def object_views(prompt: str, orbit: Orbit, size: int, generator: torch.Generator,
                 per_view: int = CONDITIONAL_PER_VIEW) -> tuple[ViewSet, torch.Tensor]:
    """(data, owner): `per_view` renders of the prompt's object at each camera; owner[i] is datum i's camera."""
    colour, shape, _ = world.parse_object(prompt)
    cameras, lights, shading, owner = _draw(orbit, per_view, generator)
    with one_thread():
        rgba = world.render(shape, world.COLOURS[colour], orbit, size, shading, lights, copies=per_view,
                            mark=world.mark_srgb(prompt))
    return ViewSet.from_rgba(rgba, cameras, world.object_index(prompt)), owner


def world_views(orbit: Orbit, size: int, generator: torch.Generator,
                per_view: int = WORLD_PER_VIEW) -> tuple[ViewSet, torch.Tensor]:
    """(data, owner): every object of the world at each camera, equal weight per object.

    Each shape is rendered once in white and tinted per colour: flat and lambertian shading
    are both albedo times a grey factor, so this equals rendering every object.
    """
    tints = torch.tensor([world.COLOURS[c] for c in world.COLOUR_NAMES], dtype=torch.float32)
    images, owners, objects = [], [], []
    for shape in world.SHAPE_NAMES:
        _, lights, shading, owner = _draw(orbit, per_view, generator)
        with one_thread():
            white = world.render(shape, (1.0, 1.0, 1.0), orbit, size, shading, lights, copies=per_view)
        rgb = white[None, :, :3] * tints[:, None, :, None, None]  # (colours, N, 3, S, S)
        images.append(torch.cat((rgb, white[None, :, 3:].expand(len(tints), -1, -1, -1, -1)), 2).flatten(0, 1))
        owners += [owner] * len(tints)
        objects += [world.object_index(world.prompt_for(c, shape)) for c in world.COLOUR_NAMES]
    owner = torch.cat(owners)
    index = torch.cat([torch.full((len(o),), k) for k, o in enumerate(owners)])
    data = ViewSet.from_rgba(torch.cat(images), orbit.subset(owner), 0)
    return replace(data, obj=torch.tensor(objects)[index]).with_equal_object_prior(), owner


def owner_mask(owner: torch.Tensor, views: int, device) -> torch.Tensor:
    """(views, N) True where datum n was rendered at judged camera v."""
    return owner.to(device)[None, :] == torch.arange(views, device=device)[:, None]
