"""`python -m blender_sds.engine bench edits`: does an artist's edit survive a full-length refine?

Each prompt is generated once (the pocket job's defaults), then its mesh is edited the two
ways issue 14 names and refined from the edit as the add-on's Refine does with Source Mesh
(`addon/job_builder.refine_job`: the run's own job, bounds grown to hold the edit with a
10% margin, `init.mesh`, keep_shape at its default, the whole run's steps):

- **tall**: every vertex moved to 1.6x its height about the middle. Reported: the refined
  height/width against the edit's (the issue asks within 10%).
- **cut**: every face above two thirds of the height deleted (an open mesh). Reported: the
  refined volume above that plane, as a fraction of the volume removed (the issue asks at
  most 20%). Volumes are counted on the winding-number grid (scene/solid.py), which holds
  for open meshes too.

The pocket teacher is camera-blind and knows each shape at one size in the bounds: it
widens a stretched cube to its cube, and grows a cut one back. A refine that keeps the edit
does so against that pull.

    python -m blender_sds.engine bench edits [--prompts "a green cube;a red cylinder"] [--cases tall,cut]
        [--keep-shape W] [--steps N] [--jobs 2] [--out DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ...job import merge_overrides, validate_job
from ...results import JOB_FILE, MESH_FILE
from .janus import _list
from .parallel import JOBS, check_run_options, run_all

CASES = ("tall", "cut")
PROMPTS = ("a green cube", "a red cylinder")
STRETCH = 1.6
CUT_AT = 2.0 / 3.0  # of the height, from the bottom
BOUNDS_MARGIN = 0.1  # as the add-on's start_mesh.fitted_bounds
START_FILE = "edited.npz"
OUTPUT = {"preview_every": 0, "checkpoint_every": 0, "progress_every": 100}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m blender_sds.engine bench edits",
                                description="Edit generated pocket meshes (1.6x taller; top third cut off), "
                                            "refine from the edit as the add-on does, and measure what stayed.")
    p.add_argument("--prompts", default=";".join(PROMPTS), help=f"semicolon-separated (default {';'.join(PROMPTS)})")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--keep-shape", type=float, default=None, help="optim.keep_shape of the refines (default: the job's)")
    p.add_argument("--preset", choices=("draft", "standard", "high"), default="standard")
    p.add_argument("--steps", type=int, default=0, help="steps per run (0: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=JOBS, help=f"runs at once, one process each (default {JOBS})")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    p.add_argument("--out", default=None, help="keep the runs in OUT/<prompt>/{generated,<case>}")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    try:
        args.prompts = _list(args.prompts, "prompts", sep=";")
        args.cases = _list(args.cases, "cases")
    except argparse.ArgumentTypeError as error:
        p.error(str(error))
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"--cases: unknown {', '.join(map(repr, unknown))}; cases: {', '.join(CASES)}")
    if args.keep_shape is not None and args.keep_shape < 0:
        p.error(f"--keep-shape: must be 0 or more, got {args.keep_shape}")
    check_run_options(p, args)
    return args


def generation_job(prompt: str, args: argparse.Namespace) -> dict:
    raw = {"version": 1, "prompt": prompt, "seed": args.seed, "preset": args.preset,
           "guidance": {"kind": "pocket"}, "output": OUTPUT}
    if args.steps:
        raw["steps"] = args.steps
    return validate_job(raw)


def edited(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, case: str) -> tuple[dict, dict]:
    """(the edited mesh's arrays, what the case measures against)."""
    low, high = vertices[:, 2].min(), vertices[:, 2].max()
    if case == "tall":
        moved = vertices.copy()
        middle = (low + high) / 2
        moved[:, 2] = middle + STRETCH * (moved[:, 2] - middle)
        return {"vertices": moved, "faces": faces, "colors": colors}, {"edited_ratio": height_ratio(moved)}
    plane = float(low + CUT_AT * (high - low))
    kept = faces[(vertices[faces][:, :, 2] <= plane).all(axis=1)]
    used, index = np.unique(kept, return_inverse=True)
    return ({"vertices": vertices[used], "faces": index.reshape(-1, 3).astype(np.int32), "colors": colors[used]},
            {"plane": plane})


def height_ratio(vertices: np.ndarray) -> float:
    extent = vertices.max(axis=0) - vertices.min(axis=0)
    return float(extent[2] / extent[0])


def volume_above(vertices: np.ndarray, faces: np.ndarray, plane: float, bounds: dict) -> float:
    """The volume inside the mesh above z = plane, counted on the 128^3 winding-number grid."""
    from ..scene.solid import MeshSolid
    try:
        solid = MeshSolid(vertices.astype(np.float64), faces.astype(np.int64), None, bounds["center"], bounds["size"])
    except ValueError:  # nothing inside at all
        return 0.0
    z = solid.grid_points()[:, 2].reshape(solid.inside.shape)
    return float((solid.inside & (z > plane)).sum()) * solid.cell ** 3


def refine_job(generated: dict, start: Path, vertices: np.ndarray, args: argparse.Namespace) -> dict:
    """The add-on's Refine with Source Mesh (job_builder.refine_job), engine side."""
    job = json.loads(json.dumps(generated))
    center, half = np.asarray(job["bounds"]["center"], dtype=np.float64), job["bounds"]["size"] / 2
    low, high = vertices.min(axis=0).astype(np.float64), vertices.max(axis=0).astype(np.float64)
    if (low < center - half).any() or (high > center + half).any():
        extent = float((high - low).max())
        low = np.minimum(low - BOUNDS_MARGIN * extent, center - half)
        high = np.maximum(high + BOUNDS_MARGIN * extent, center + half)
        job["bounds"] = {"center": [float(v) for v in (low + high) / 2], "size": float((high - low).max())}
    for key in ("keep_shape", "keep_shape_schedule", "albedo_steps"):  # the start mesh's own defaults
        job["optim"].pop(key, None)
    job["init"] = {"mesh": str(start), "checkpoint": None, "resume": False}
    if args.keep_shape is not None:
        job = merge_overrides(job, {"optim": {"keep_shape": args.keep_shape}})
    return validate_job(job)


def generate(job: dict, args: argparse.Namespace, out_dir: Path) -> dict:
    """One run, timed (a module-level function: run_all sends it to worker processes)."""
    from ..train.run import run_job
    started = time.monotonic()
    run_job(job, out_dir, device=args.device)
    return {"seconds": time.monotonic() - started}


def refine(job: dict, args: argparse.Namespace, out_dir: Path) -> dict:
    ran = generate(job, args, out_dir)
    with np.load(out_dir / MESH_FILE) as data:
        vertices, faces = data["vertices"], data["faces"]
    return {**ran, "ratio": height_ratio(vertices), "mesh": (vertices, faces)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    report = sys.stderr if args.json else sys.stdout
    print(f"bench edits: {len(args.prompts)} prompts x {', '.join(args.cases)}, preset {args.preset}"
          + (f", steps {args.steps}" if args.steps else "") + f", {args.jobs} at a time", file=report, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-edits-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        folders = {p: root / p.replace(" ", "_") for p in args.prompts}
        generations = [(generation_job(p, args), folders[p] / "generated") for p in args.prompts]
        run_all(generations, args, lambda i, r: print(f"generated {args.prompts[i]!r} in {r['seconds']:.0f} s",
                                                      file=report, flush=True), judge=generate)
        plan, measures = [], []
        for prompt, (job, out) in zip(args.prompts, generations):
            with np.load(out / MESH_FILE) as data:
                vertices, faces, colors = data["vertices"], data["faces"], data["colors"]
            for case in args.cases:
                mesh, measure = edited(vertices, faces, colors, case)
                start = folders[prompt] / case / START_FILE
                start.parent.mkdir(parents=True, exist_ok=True)
                np.savez(start, **mesh)
                refined = refine_job(json.loads((out / JOB_FILE).read_text(encoding="utf-8")), start,
                                     mesh["vertices"], args)
                if case == "cut":
                    measure["removed"] = volume_above(vertices, faces, measure["plane"], refined["bounds"])
                plan.append((refined, folders[prompt] / case / "refined"))
                measures.append({"prompt": prompt, "case": case, "generated_ratio": height_ratio(vertices),
                                 "keep_shape": refined["optim"]["keep_shape"], "steps": refined["steps"], **measure})

        def row(i, r):
            m = measures[i]
            if m["case"] == "tall":
                m["refined_ratio"] = r["ratio"]
                m["ratio_error"] = r["ratio"] / m["edited_ratio"] - 1
                said = (f"height/width {m['generated_ratio']:.2f} -> edited {m['edited_ratio']:.2f} -> "
                        f"refined {r['ratio']:.2f} ({100 * m['ratio_error']:+.1f}%)")
            else:
                m["grown_back"] = volume_above(*r.pop("mesh"), m["plane"], plan[i][0]["bounds"])
                m["grown_fraction"] = m["grown_back"] / m["removed"] if m["removed"] > 0 else None
                share = "n/a" if m["grown_fraction"] is None else f"{100 * m['grown_fraction']:.1f}%"
                said = f"removed {m['removed']:.3f}, grown back {m['grown_back']:.3f} ({share})"
            m["seconds"] = r["seconds"]
            print(f"{m['prompt']:<16} {m['case']:<5} keep_shape {m['keep_shape']:g}, {m['steps']} steps: {said}  "
                  f"{r['seconds']:.0f} s", file=report, flush=True)
        run_all(plan, args, row, judge=refine)
    if args.json:
        print(json.dumps({"benchmark": "edits", "preset": args.preset, "steps": args.steps, "seed": args.seed,
                          "results": measures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
