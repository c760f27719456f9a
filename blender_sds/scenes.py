"""A known object for ground-truth checks, ray-cast analytically (numpy, not the engine).

A box with corners, red on top and blue below, sitting in the bounds of docs/ARCHITECTURE.md's
example job (centre (0, 0, 1), size 2). Reference views of it drive the reference-views
teacher; its exact surface and colours measure what came back. Run as a module to write
a reference job: `python -m blender_sds.scenes OUT_DIR [--views N] [--size PX]`.
Standard library + numpy + Pillow only, so tests and demos on either side can use it.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from . import srgb

CENTER = np.array([0.0, 0.0, 1.0])
BOUNDS_SIZE = 2.0
HALF_EXTENT = np.array([0.5, 0.4, 0.35])  # the box's half sizes in x, y, z (world units)
TOP_SRGB = np.array([0.85, 0.15, 0.1])  # red, above the box's middle
BOTTOM_SRGB = np.array([0.1, 0.3, 0.9])  # blue, below it


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB -> linear for arrays, by the one curve of srgb.py."""
    return srgb.decode(np.clip(c, 0, 1), where=np.where, floor=np.maximum)


def albedo_srgb(points: np.ndarray) -> np.ndarray:
    top = (points[..., 2] >= CENTER[2])[..., None]
    return np.where(top, TOP_SRGB, BOTTOM_SRGB)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye
    return c2w


def orbit_cameras(count: int, size: int, distance: float = 2.5, fovy_deg: float = 45.0) -> list[dict]:
    """Cameras on a spiral around the object: every side, from below the equator to high above."""
    cams = []
    focal = size / (2 * math.tan(math.radians(fovy_deg) / 2))
    golden = math.pi * (3 - math.sqrt(5))
    for i in range(count):
        elevation = math.radians(-15 + 80 * (i + 0.5) / count)
        azimuth = i * golden
        eye = CENTER + distance * np.array([math.sin(azimuth) * math.cos(elevation),
                                            -math.cos(azimuth) * math.cos(elevation), math.sin(elevation)])
        cams.append({"c2w": look_at(eye, CENTER).tolist(), "width": size, "height": size,
                     "fx": focal, "fy": focal, "cx": size / 2, "cy": size / 2, "name": f"view{i:03d}"})
    return cams


def render_rgba(camera: dict, supersample: int = 4) -> np.ndarray:
    """Unlit albedo with coverage alpha, (H, W, 4) in [0, 1], sRGB; box-filtered subpixels."""
    w, h, s = camera["width"], camera["height"], supersample
    c2w = np.asarray(camera["c2w"])
    v, u = np.meshgrid((np.arange(h * s) + 0.5) / s, (np.arange(w * s) + 0.5) / s, indexing="ij")
    d = np.stack([(u - camera["cx"]) / camera["fx"], -(v - camera["cy"]) / camera["fy"], -np.ones_like(u)], -1)
    d = d @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:3, 3]
    lo, hi = CENTER - HALF_EXTENT, CENTER + HALF_EXTENT
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - o) / d, (hi - o) / d
    near = np.nanmax(np.minimum(t0, t1), axis=-1)
    far = np.nanmin(np.maximum(t0, t1), axis=-1)
    hit = (far >= near) & (far > 0)
    p = o + near[..., None] * d
    rgb = np.where(hit[..., None], albedo_srgb(p), 0.0)
    rgba = np.concatenate([rgb, hit[..., None].astype(float)], -1)
    return rgba.reshape(h, s, w, s, 4).mean(axis=(1, 3))


def surface_samples(count: int, seed: int = 0) -> np.ndarray:
    """Points uniformly on the box's surface (area-weighted faces)."""
    rng = np.random.default_rng(seed)
    ex = HALF_EXTENT
    areas = np.array([ex[1] * ex[2], ex[0] * ex[2], ex[0] * ex[1]]).repeat(2)
    face = rng.choice(6, size=count, p=areas / areas.sum())
    p = rng.uniform(-1, 1, size=(count, 3)) * ex
    axis = face // 2
    sign = np.where(face % 2 == 0, -1.0, 1.0)
    p[np.arange(count), axis] = sign * ex[axis]
    return p + CENTER


def write_reference_job(folder: str | Path, views: int = 32, size: int = 48, steps: int = 400) -> Path:
    """Write RGBA views and a reference-kind job that reconstructs the box from them."""
    from PIL import Image
    folder = Path(folder)
    (folder / "views").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, cam in enumerate(orbit_cameras(views, size)):
        rgba = render_rgba(cam)
        name = f"views/{i:03d}.png"
        Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").save(folder / name)
        entries.append({"image": name, "camera": cam})
    job = {
        "version": 1, "prompt": "a box, red on top and blue below", "seed": 0, "preset": "draft",
        "steps": steps, "bounds": {"center": CENTER.tolist(), "size": BOUNDS_SIZE},
        "guidance": {"kind": "reference", "views": entries},
        "cameras": {"mode": "rig"},
        "render": {"resolution": size, "batch": 1, "samples": 48},
        "mesh": {"resolution": 96},
        "output": {"preview_every": 100, "checkpoint_every": 100, "progress_every": 10},
    }
    path = folder / "job.json"
    path.write_text(json.dumps(job, indent=1) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    print(write_reference_job(args.out, args.views, args.size, args.steps))


if __name__ == "__main__":
    main()
