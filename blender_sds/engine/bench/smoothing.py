"""Smoothing and the face budget on real pocket results: bumpiness and Chamfer, same field.

Each prompt (a cube or a pyramid: only they have flat faces to judge) runs once with the
real engine (`run_job`, the pocket teacher, the job's defaults), then its trained field,
loaded from the result's checkpoint, is meshed again with every `--smooth` x
`--target-faces` pair, so the rows of one asset differ only in the mesh stage. Per mesh:
faces, `metrics.flat_bumpiness` (mean angle between neighbouring faces on the true flat
faces), `metrics.flat_deviation` (their mean angle from the face's own mean normal),
Chamfer (exact surface-to-surface distance to the true polyhedron, % of the bounds; the
yardstick's sampled Chamfer has a floor near 0.5% from its sample spacing, too coarse for
this comparison) with its two halves and the surface's mean signed offset from the truth
(`surface_distances`), and the yardstick's colour error. Per asset, where the field itself
puts the surface against the truth (`field_surfaces`): the part of the offset no mesh stage removes.

    python -m blender_sds.engine.bench.smoothing [--prompt "a green cube" ...] [--seed 0]
        [--steps N] [--smooth 0 10 20 40] [--target-faces 0 30000] [--override JSON] [--threads N]
        [--out DIR [--reuse]] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ...job import DEFAULT_SMOOTH, DEFAULT_TARGET_FACES, JobError, merge_overrides, validate_job
from ..pocket import metrics, world
from ..pocket.shapes import Polyhedron

PROMPTS = ("a green cube", "a purple cube", "a blue pyramid", "a yellow pyramid")
# As tests/engine/train/test_pocket_job.py runs its job: no previews or checkpoints on the way.
OUTPUT = {"preview_every": 0, "checkpoint_every": 0, "progress_every": 100}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m blender_sds.engine.bench.smoothing",
                                description="Mesh trained pocket fields with several smoothing and face budgets.")
    p.add_argument("--prompt", action="append", default=None,
                   help=f"a cube or pyramid prompt (repeatable; default {'; '.join(PROMPTS)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=("draft", "standard", "high"), default="standard")
    p.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    p.add_argument("--smooth", type=int, nargs="+", default=sorted({0, 10, DEFAULT_SMOOTH, 40}))
    p.add_argument("--target-faces", type=int, nargs="+", default=[0, DEFAULT_TARGET_FACES])
    p.add_argument("--override", default=None, metavar="JSON",
                   help='job keys merged over every job, e.g. \'{"render": {"resolution": 64}}\'')
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="keep each result in OUT/<n>_<prompt> (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true",
                   help="with --out: mesh a complete earlier result of the same job again instead of training")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.reuse and not args.out:
        p.error("--reuse needs --out (the folder of the earlier results)")
    args.prompt = args.prompt or list(PROMPTS)
    try:
        args.override = json.loads(args.override) if args.override else {}
    except ValueError as error:
        p.error(f"--override: not JSON ({error})")
    if not isinstance(args.override, dict):
        p.error("--override: must be a JSON object of job keys")
    for prompt in args.prompt:
        try:
            if not isinstance(world.shape_of(prompt), Polyhedron):
                p.error(f"--prompt: {prompt!r} has no flat faces (use a cube or a pyramid)")
        except ValueError as error:
            p.error(f"--prompt: {error}")
    if any(not 0 <= s <= 1000 for s in args.smooth):
        p.error(f"--smooth: each must be 0 .. 1000, got {args.smooth}")
    if any(t != 0 and t < 100 for t in args.target_faces):
        p.error(f"--target-faces: each must be 0 or >= 100, got {args.target_faces}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads: must be >= 1, got {args.threads}")
    return args


def surface_distances(mesh: dict, prompt: str, bounds: dict, n: int = metrics.SURFACE_SAMPLES) -> dict:
    """Exact (point to triangle, libigl) distances between the mesh's surface and the true
    polyhedron's, each as a fraction of the bounds size: `to_truth` (mean over points on the
    mesh), `to_mesh` (mean over points on the truth), `chamfer` (their mean) and `offset`
    (the mean signed distance of the mesh's points, > 0 outside the truth).

    The halves are kept apart because smoothing moves them apart: on a surface that lies
    outside the truth, the truth's nearest points on the mesh are its inward bumps, so
    flattening them raises `to_mesh` even where the surface comes closer to the truth
    (docs/QUALITY.md "Chamfer's two halves")."""
    import igl

    shape = world.shape_of(prompt)
    triangles = world.to_world(shape.triangles.numpy().reshape(-1, 3), bounds)
    truth_f = np.arange(len(triangles), dtype=np.int64).reshape(-1, 3)
    on_mesh, _ = metrics.sample_surface(mesh, n, seed=1)
    on_truth = world.truth_points(prompt, n, bounds, seed=2)
    to_truth = np.sqrt(igl.point_mesh_squared_distance(on_mesh, triangles, truth_f)[0])
    to_mesh = np.sqrt(igl.point_mesh_squared_distance(on_truth, mesh["vertices"].astype(np.float64),
                                                      mesh["faces"].astype(np.int64))[0])
    outside = shape.level(torch.from_numpy(world.to_unit(on_mesh, bounds))).numpy() > 0  # convex: exact side
    size = float(bounds["size"])
    return {"chamfer": 0.5 * float(to_truth.mean() + to_mesh.mean()) / size,
            "to_truth": float(to_truth.mean()) / size, "to_mesh": float(to_mesh.mean()) / size,
            "offset": float(np.where(outside, to_truth, -to_truth).mean()) / size}


def field_surfaces(density_fn, prompt: str, bounds: dict, level: float, rays: int = 400,
                   samples: int = 751) -> dict:
    """Where the field puts the surface, against the truth, along `rays` directions from the
    centre (a Fibonacci sphere), each as the mean signed distance (> 0 outside) in fractions
    of the bounds size: `level_offset` where the density last exceeds the mesh's `level`,
    `rendered_offset` where the optical depth from outside reaches ln 2 (a render's surface).

    It tells the training's share of a mesh's offset (the rendered one) from the mesh
    stage's (the gap between the two, which the level decides)."""
    i = np.arange(rays) + 0.5
    z = 1 - 2 * i / rays
    turn = math.pi * (3 - math.sqrt(5)) * i
    dirs = np.stack((np.sqrt(1 - z * z) * np.cos(turn), np.sqrt(1 - z * z) * np.sin(turn), z), axis=1)
    shape = world.shape_of(prompt)
    far = 2.0  # unit frame: outside the bounds, whose half-diagonal is sqrt(3)/2
    hit, _ = shape.intersect(torch.from_numpy(far * dirs), torch.from_numpy(-dirs))
    truth = far - hit.numpy()
    t = np.linspace(0.0, np.sqrt(3) / 2, samples)
    points = t[None, :, None] * dirs[:, None, :]  # (rays, samples, 3) unit frame
    inside = (np.abs(points) <= 0.5).all(-1)
    with torch.no_grad():
        sigma = density_fn(torch.from_numpy(world.to_world(points.reshape(-1, 3), bounds)).float())
    sigma = np.where(inside, sigma.double().numpy().reshape(rays, samples), 0.0)
    depth = np.cumsum(sigma[:, ::-1] * (t[1] - t[0]), axis=1)[:, ::-1]  # density is per bounds size

    def outermost(mask):
        last = samples - 1 - np.argmax(mask[:, ::-1], axis=1)
        return np.where(mask.any(1), t[last], np.nan)

    return {"level_offset": float(np.nanmean(outermost(sigma > level) - truth)),
            "rendered_offset": float(np.nanmean(outermost(depth > math.log(2)) - truth))}


def remembered(density_fn):
    """The field's density, each chunk of the grid computed once: every variant meshes one grid."""
    memo = {}

    def density(points):
        key = (len(points), tuple(points[0].tolist()), tuple(points[-1].tolist()))
        if key not in memo:
            memo[key] = density_fn(points)
        return memo[key]

    return density


def trained_field(result: Path, job: dict):
    from ..scene.field import Field, FieldConfig
    from ..train.artifacts import load_checkpoint
    from ...results import CHECKPOINT_FILE
    state = load_checkpoint(result / CHECKPOINT_FILE)
    field = Field(list(job["bounds"]["center"]), job["bounds"]["size"], FieldConfig(**state["field_config"]))
    field.load_state_dict(state["field"])
    return field.eval()


def one_asset(prompt: str, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    from ..scene.isosurface import extract_mesh
    from ..settings import Settings
    from ..train.run import run_job
    raw = {"version": 1, "prompt": prompt, "seed": args.seed, "preset": args.preset,
           "guidance": {"kind": "pocket"}, "output": OUTPUT}
    if args.steps is not None:
        raw["steps"] = args.steps
    job = validate_job(merge_overrides(raw, args.override))
    started = time.monotonic()
    if args.reuse and _same_job(out_dir, job):
        result, train_seconds = out_dir, None
    else:
        result = run_job(job, out_dir, device="cpu")
        train_seconds = time.monotonic() - started
    field = trained_field(result, job)
    mesh_opts = Settings.from_job(job).mesh  # what Run.extract_mesh meshes with
    density = remembered(field.density)
    bounds = job["bounds"]
    rows = []
    for target in args.target_faces:
        for smooth in args.smooth:
            started = time.monotonic()
            with torch.no_grad():
                mesh = extract_mesh(density, field.albedo, list(bounds["center"]), bounds["size"],
                                    resolution=mesh_opts["resolution"], threshold=mesh_opts["threshold"],
                                    min_component=mesh_opts["min_component"], smooth=smooth, target_faces=target)
            rows.append({"prompt": prompt, "smooth": smooth, "target_faces": target,
                         "faces": int(len(mesh["faces"])), "resolution": mesh_opts["resolution"],
                         "bumpiness": metrics.flat_bumpiness(mesh, prompt, bounds),
                         "deviation": metrics.flat_deviation(mesh, prompt, bounds),
                         **surface_distances(mesh, prompt, bounds),
                         "chamfer_sampled": metrics.mesh_chamfer(mesh, prompt, bounds),
                         "colour_error": metrics.colour_error(mesh, prompt, bounds=bounds),
                         "mesh_seconds": time.monotonic() - started, "train_seconds": train_seconds})
    surfaces = field_surfaces(field.density, prompt, bounds, mesh["threshold"])  # one level for every row
    return [{**row, **surfaces} for row in rows]


def _same_job(out_dir: Path, job: dict) -> bool:
    """Whether out_dir holds a complete result of this very job (its mesh options aside)."""
    from ...results import CHECKPOINT_FILE, JOB_FILE, read_status
    try:
        kept = json.loads((out_dir / JOB_FILE).read_text(encoding="utf-8"))
        complete = read_status(out_dir)["state"] == "complete" and (out_dir / CHECKPOINT_FILE).exists()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return complete and _without_mesh(kept) == _without_mesh(job)


def _without_mesh(job: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(job)).items() if k != "mesh"}


def _row(r: dict) -> str:
    return (f"{r['prompt']:<18} {r['target_faces']:>6} {r['smooth']:>4} {r['faces']:>7}  {r['bumpiness']:6.2f}  "
            f"{r['deviation']:6.2f}  {100 * r['chamfer']:6.3f}%  {100 * r['to_truth']:6.3f}%  "
            f"{100 * r['to_mesh']:6.3f}%  {100 * r['offset']:+6.3f}%  {100 * r['chamfer_sampled']:6.2f}%  "
            f"{r['colour_error']:6.4f}  {r['mesh_seconds']:5.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = sys.stderr if args.json else sys.stdout
    print(f"bench smoothing: preset {args.preset}, seed {args.seed}, threads {torch.get_num_threads()}"
          + (f", override {json.dumps(args.override)}" if args.override else ""), file=report)
    print(f"{'prompt':<18} {'budget':>6} {'smth':>4} {'faces':>7}  {'bump°':>6}  {'dev°':>6}  {'chamfer':>7}  "
          f"{'→truth':>7}  {'→mesh':>7}  {'offset':>7}  {'sampled':>7}  {'colour':>6}  {'mesh s':>5}",
          file=report, flush=True)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-smoothing-") as tmp:
            root = Path(args.out) if args.out else Path(tmp)
            for i, prompt in enumerate(args.prompt):
                asset = one_asset(prompt, args, root / f"{i:02d}_{prompt.replace(' ', '_')}")
                for r in asset:
                    print(_row(r), file=report, flush=True)
                first = asset[0]
                trained = first["train_seconds"]
                print(f"  ({prompt}: " + ("an earlier result" if trained is None else f"trained in {trained:.0f} s")
                      + f"; along rays from the centre the field's surface lies {100 * first['level_offset']:+.2f}%"
                      f" outside the truth at the mesh's level, {100 * first['rendered_offset']:+.2f}% where"
                      " renders see it)", file=report, flush=True)
                rows += asset
    except JobError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"benchmark": "smoothing", "preset": args.preset, "seed": args.seed,
                          "override": args.override, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
