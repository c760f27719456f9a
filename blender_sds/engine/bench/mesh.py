"""`bench mesh`: how long turning a field into a coloured mesh takes, at the sizes jobs ask for.

It times the engine's own `isosurface.extract_mesh` (density grid, floater removal, cavity
filling, marching cubes, Taubin smoothing, decimation to the face budget, vertex colours)
on a field that looks trained: the engine's
hash-grid `Field` whose density is a lumpy solid (a body, a handle and a spout, with
surface noise and a few floaters) written into its table by fitting (scene/fitting.py), so
the grid queries, the surface area and the floaters all cost what a real asset's do. Each stage is timed on
its own as well, so a slow total says which stage to fix. `--million` adds one row: a
bumpy sphere of 1.3M faces (what a 512^3 grid gives an asset that fills its bounds)
smoothed and decimated to the budget.

    python -m blender_sds.engine bench mesh [--resolution 128 256] [--device auto|cpu|cuda]
        [--smooth N] [--target-faces N] [--million] [--repeat N] [--json]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from . import profiling
from .profiling import time_stage
from ...job import DEFAULT_SMOOTH, DEFAULT_TARGET_FACES
from ..scene import isosurface, remesh
from ..scene.field import Field, FieldConfig
from ..scene.fitting import fit_field

CENTER, SIZE = (0.0, 0.0, 0.0), 2.0


def teapot_density(points: torch.Tensor) -> torch.Tensor:
    """An analytic teapot-ish solid in units of 1/bounds.size: density ~40 inside, ~0 outside,
    crossing the auto threshold (10) on a bumpy surface; plus three small floaters."""
    x, y, z = points.unbind(-1)
    body = 0.45 - torch.sqrt((x / 1.1) ** 2 + y ** 2 + (z / 0.8) ** 2)
    handle = 0.06 - torch.sqrt((torch.sqrt((x + 0.55) ** 2 + z ** 2) - 0.2) ** 2 + y ** 2)
    spout = 0.07 - torch.sqrt(y ** 2 + ((z - (x - 0.45) * 0.8) ** 2)) - torch.relu(x - 0.8) - torch.relu(0.4 - x)
    bumps = 0.015 * torch.sin(23 * x) * torch.sin(19 * y) * torch.sin(17 * z)
    solid = torch.maximum(torch.maximum(body, handle), spout) + bumps
    floaters = torch.stack([0.03 - (points - torch.tensor(c, device=points.device)).norm(dim=-1)
                            for c in ((0.8, 0.7, 0.6), (-0.7, -0.75, 0.5), (0.6, -0.8, -0.7))]).amax(0)
    return 40.0 * torch.sigmoid(torch.maximum(solid, floaters) * 60.0)


def gradient_albedo(points: torch.Tensor) -> torch.Tensor:
    """A colour ramp across the box (red along x, green along z), for the fit's albedo."""
    return torch.stack([(points[:, 0] + 1) / 2, (points[:, 2] + 1) / 2, torch.full_like(points[:, 0], 0.3)], -1)


def trained_field(device: torch.device, steps: int = 200, seed: int = 0, batch: int = 8192) -> Field:
    """The engine's Field fitted to `teapot_density` (and a colour gradient) for a few hundred
    Adam steps: its queries cost exactly a trained field's, its surface is a learned one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        field = Field(CENTER, SIZE, FieldConfig.for_preset("standard")).to(device)
    return fit_field(field, teapot_density, gradient_albedo, steps=steps, seed=seed, batch=batch, density_scale=40.0)


def measure(field: Field, device: torch.device, resolution: int, repeat: int, kind: str,
            smooth: int = 0, target_faces: int = 0) -> dict:
    density_fn = field.density if kind == "field" else teapot_density
    with torch.no_grad():
        total_ms, mesh = time_stage(lambda: isosurface.extract_mesh(
            density_fn, field.albedo, CENTER, SIZE, resolution=resolution, device=device,
            smooth=smooth, target_faces=target_faces), device, repeat)
        grid_ms, grid = time_stage(lambda: isosurface.density_grid(density_fn, CENTER, SIZE, resolution, device),
                                   device, repeat)
    values = grid.numpy()
    level = mesh["threshold"]
    clean_ms, solid = time_stage(lambda: isosurface._drop_floaters(values > level, 0.05), "cpu", repeat)
    fill_ms, (solid, marched) = time_stage(lambda: isosurface._fill_cavities(values, solid, level), "cpu", repeat)
    march_ms, (vertices, faces) = time_stage(lambda: isosurface._march(marched, solid, level), "cpu", repeat)
    cell = SIZE / resolution
    world = (np.asarray(CENTER) - SIZE / 2 + cell / 2 + vertices * cell).astype(np.float32)  # as extract_mesh does
    smooth_ms, world_smooth = time_stage(lambda: remesh.smooth(world, faces, smooth), "cpu", repeat)
    decimate_ms, _ = time_stage(lambda: remesh.decimate(world_smooth, faces, target_faces), "cpu", repeat)
    depth = isosurface.COLOUR_DEPTH * SIZE / resolution
    with torch.no_grad():
        colour_ms, _ = time_stage(lambda: isosurface._vertex_colours(
            field.albedo, isosurface._inward(mesh["vertices"], mesh["faces"], depth), device), device, repeat)
    # Stages are timed apart from the total, so on a busy machine they need not add up to it exactly.
    return {"resolution": resolution, "density": kind, "ms_total": total_ms, "seconds_total": total_ms / 1000.0,
            "breakdown_ms": {"density_grid": grid_ms, "floaters": clean_ms, "cavities": fill_ms,
                             "marching_cubes": march_ms, "colours": colour_ms},
            "remesh_ms": {"smooth": smooth_ms, "decimate": decimate_ms},
            "smooth": smooth, "target_faces": target_faces, "marched_faces": int(len(faces)),
            "vertices": int(len(mesh["vertices"])), "faces": int(len(mesh["faces"])),
            "threshold": float(level), "peak_gpu_mb": profiling.peak_gpu_mb(device)["allocated"]}


def million(smooth: int, target_faces: int, repeat: int) -> dict:
    """Smoothing and decimation alone on a 1.3M-face bumpy sphere (an icosphere, 8 subdivisions)."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=8, radius=0.8)
    vertices = np.asarray(sphere.vertices)
    x, y, z = vertices.T
    vertices = vertices * (1 + 0.01 * np.sin(40 * x) * np.sin(37 * y) * np.sin(31 * z))[:, None]
    vertices, faces = vertices.astype(np.float32), np.asarray(sphere.faces, dtype=np.int32)
    smooth_ms, smoothed = time_stage(lambda: remesh.smooth(vertices, faces, smooth), "cpu", repeat)
    decimate_ms, (_, kept) = time_stage(lambda: remesh.decimate(smoothed, faces, target_faces), "cpu", repeat)
    return {"faces_in": int(len(faces)), "faces_out": int(len(kept)), "smooth": smooth, "target_faces": target_faces,
            "smooth_ms": smooth_ms, "decimate_ms": decimate_ms}


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m blender_sds.engine bench mesh",
                                     description="Time isosurface extraction of a trained-looking field.")
    parser.add_argument("--resolution", type=int, nargs="+", default=[128, 256],
                        help="grid sizes (default 128 256)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--repeat", type=int, default=1, help="median of this many runs after one untimed")
    parser.add_argument("--density", choices=("field", "analytic"), default="field",
                        help="the fitted hash-grid field (default) or the analytic solid itself")
    parser.add_argument("--fit-steps", type=int, default=200,
                        help="Adam steps fitting the field to the solid (0: the untrained blob)")
    parser.add_argument("--smooth", type=int, default=DEFAULT_SMOOTH,
                        help=f"Taubin steps, as mesh.smooth (default {DEFAULT_SMOOTH})")
    parser.add_argument("--target-faces", type=int, default=DEFAULT_TARGET_FACES,
                        help=f"face budget, as mesh.target_faces (default {DEFAULT_TARGET_FACES}; 0 keeps every face)")
    parser.add_argument("--million", action="store_true",
                        help="also smooth and decimate a 1.3M-face mesh to the budget")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    for r in args.resolution:
        if not 16 <= r <= 1024:
            parser.error(f"--resolution must be 16 .. 1024 (as mesh.resolution), got {r}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.fit_steps < 0:
        parser.error(f"--fit-steps must be >= 0, got {args.fit_steps}")
    if not 0 <= args.smooth <= 1000:
        parser.error(f"--smooth must be 0 .. 1000 (as mesh.smooth), got {args.smooth}")
    if args.target_faces != 0 and not 100 <= args.target_faces <= 10**8:
        parser.error(f"--target-faces must be 0 or 100 .. 10^8 (as mesh.target_faces), got {args.target_faces}")
    return args


def main(argv=None) -> int:
    argv, args, device = profiling.bench_start(parse, argv)
    if device is None:
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    info = profiling.machine(device)  # the commit and load the measured code started from
    field = trained_field(device, steps=args.fit_steps)
    profiling.reset_peak_gpu(device)
    runs = {str(r): measure(field, device, r, args.repeat, args.density, args.smooth, args.target_faces)
            for r in args.resolution}
    big = million(args.smooth, args.target_faces, args.repeat) if args.million else None
    result = {"device": str(device), **info, "load_average_end": profiling.machine(device)["load_average"],
              "command": "python -m blender_sds.engine bench mesh " + " ".join(argv), "resolutions": runs,
              "million": big}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"bench mesh on {result['device']} ({result['device_name']}), commit {result['commit']}, "
          f"{args.density} density, load average {result['load_average']}")
    print(f"  smooth {args.smooth}, target faces {args.target_faces}")
    for r, f in runs.items():
        b = {**f["breakdown_ms"], **f["remesh_ms"]}
        print(f"  {r}^3: {f['seconds_total']:.2f} s ({f['marched_faces']} faces marched -> {f['vertices']} vertices, "
              f"{f['faces']} faces, level {f['threshold']:g}) = " + ", ".join(f"{k} {v:.0f} ms" for k, v in b.items()))
    if big:
        print(f"  {big['faces_in']} faces -> {big['faces_out']}: smooth {big['smooth_ms'] / 1000:.2f} s, "
              f"decimate {big['decimate_ms'] / 1000:.2f} s")
    return 0
