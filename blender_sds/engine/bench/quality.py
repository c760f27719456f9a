"""`python -m blender_sds.engine bench quality`: the engine against the pocket world's known truth.

Runs the real engine (`run_job`) with the pocket teacher on every prompt of the world, or on
a seeded sample that covers every shape and every colour, and reports per asset and in
total: Chamfer distance (fraction of the bounds size), colour error (linear RGB), shape and
colour R-precision, saturation and brightness against the truth's (per asset the
differences, in total the pooled ratios) and seconds per asset. `--json` prints one JSON
object. docs/QUALITY.md explains the figures and keeps the last table.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ...job import JobError, merge_overrides, validate_job
from ...results import MESH_FILE
from ..pocket import metrics, world

DEFAULT_SAMPLE = 12
COLOUR_FIGURES = ("saturation", "truth_saturation", "saturation_difference",
                  "brightness", "truth_brightness", "brightness_difference")


def covering_sample(n: int, seed: int) -> list[str]:
    """n distinct prompts in which every shape and every colour appears (n >= both counts).

    Shapes and colours are shuffled by the seed; prompt i pairs shape i mod S with colour
    (i + i div S) mod C, a Latin-square walk that repeats no pair within S*C prompts.
    """
    shapes, colours = list(world.SHAPE_NAMES), list(world.COLOUR_NAMES)
    if len(shapes) != len(colours):
        raise RuntimeError("covering_sample assumes as many shapes as colours")
    rng = random.Random(seed)
    rng.shuffle(shapes)
    rng.shuffle(colours)
    k = len(shapes)
    return [world.prompt_for(colours[(i + i // k) % k], shapes[i % k]) for i in range(n)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m blender_sds.engine bench quality",
                                description="Run the engine on the pocket world's prompts and measure the results "
                                            "against the true shapes and colours.")
    p.add_argument("--preset", choices=("draft", "standard", "high"), default="standard")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                   help=f"how many prompts, a seeded sample covering every shape and colour "
                        f"({DEFAULT_SAMPLE} .. {len(world.PROMPTS)}; default {DEFAULT_SAMPLE})")
    p.add_argument("--all", action="store_true", help=f"every prompt of the world ({len(world.PROMPTS)})")
    p.add_argument("--prompt", action="append", default=None,
                   help="run these prompts instead of a sample (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="picks the sample and seeds every job")
    p.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    p.add_argument("--override", default=None, metavar="JSON",
                   help='job keys merged over every job, e.g. \'{"optim": {"opaque": 1000}}\' (for tuning)')
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    p.add_argument("--out", default=None, help="keep each result in OUT/<n>_<prompt> (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.override is not None:
        try:
            args.override = json.loads(args.override)
        except json.JSONDecodeError as error:
            p.error(f"--override: not JSON ({error})")
        if not isinstance(args.override, dict):
            p.error("--override: must be a JSON object of job keys")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads: must be >= 1, got {args.threads}")
    if args.prompt:
        for prompt in args.prompt:
            try:
                world.parse_prompt(prompt)
            except ValueError as error:
                p.error(f"--prompt: {error}")
    elif not args.all and not DEFAULT_SAMPLE <= args.sample <= len(world.PROMPTS):
        p.error(f"--sample: must be {DEFAULT_SAMPLE} .. {len(world.PROMPTS)} (to cover every shape and colour "
                f"with room to spare), got {args.sample}; use --all for every prompt")
    return args


def prompts_for(args: argparse.Namespace) -> list[str]:
    if args.prompt:
        return [world.prompt_for(*world.parse_prompt(p)) for p in args.prompt]
    if args.all:
        return list(world.PROMPTS)
    return covering_sample(args.sample, args.seed)


def job_for(prompt: str, args: argparse.Namespace) -> dict:
    raw = {"version": 1, "prompt": prompt, "seed": args.seed, "preset": args.preset,
           "guidance": {"kind": "pocket"}}
    if args.steps is not None:
        raw["steps"] = args.steps
    return validate_job(merge_overrides(raw, args.override or {}))


def run_one(job: dict, args: argparse.Namespace, out_dir: Path) -> dict:
    """One asset, start to finish (including the teacher's data on first use), judged."""
    from ..scene.isosurface import MeshError
    from ..train.run import run_job
    prompt = job["prompt"]
    started = time.monotonic()
    try:
        result = run_job(job, out_dir, device=args.device)
    except MeshError as error:
        seconds = time.monotonic() - started
        return {"prompt": prompt, "error": str(error), "chamfer": None, "colour_error": None, "seen_shape": None,
                "seen_colour": None, "shape_ok": False, "colour_ok": False, "seconds": seconds,
                **{key: None for key in COLOUR_FIGURES}}
    seconds = time.monotonic() - started
    with np.load(result / MESH_FILE) as data:
        mesh = {k: data[k] for k in data.files}
    judged = metrics.judge(mesh, prompt, job["bounds"])
    judged.update(seconds=seconds, steps=job["steps"], vertices=int(len(mesh["vertices"])))
    return judged


def summarise(results: list[dict]) -> dict:
    shape_rp, colour_rp = metrics.r_precision(results)
    fidelity = metrics.colour_fidelity(results)
    chamfers = [r["chamfer"] if r["chamfer"] is not None else float("inf") for r in results]
    colours = [r["colour_error"] if r["colour_error"] is not None else float("inf") for r in results]
    seconds = [r["seconds"] for r in results]

    def finite(x):
        return x if np.isfinite(x) else None

    return {"shape_r_precision": shape_rp, "colour_r_precision": colour_rp,
            "median_chamfer": finite(statistics.median(chamfers)),
            "median_colour_error": finite(statistics.median(colours)),
            "saturation_ratio": finite(fidelity["saturation_ratio"]),
            "brightness_ratio": finite(fidelity["brightness_ratio"]),
            "seconds_per_asset": statistics.fmean(seconds), "max_seconds": max(seconds), "assets": len(results)}


def figure_text(value, form: str = "+6.3f") -> str:
    """A figure for a table: n/a where there is none (a failed run, a mesh without colours)."""
    return "n/a" if value is None or not np.isfinite(value) else format(value, form)


def _row(i: int, r: dict) -> str:
    if r.get("error"):
        return f"{i:>3}  {r['prompt']:<18}  {'no mesh: ' + r['error'][:60]:<59}  {r['seconds']:7.1f}"
    return (f"{i:>3}  {r['prompt']:<18}  {100 * r['chamfer']:7.2f}%  {r['colour_error']:6.3f}  "
            f"{r['seen_shape']:<9}{'ok' if r['shape_ok'] else '--':<4}{r['seen_colour']:<8}"
            f"{'ok' if r['colour_ok'] else '--':<4}  {figure_text(r['saturation_difference']):>6}  "
            f"{figure_text(r['brightness_difference']):>6}  {r['seconds']:7.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    prompts = prompts_for(args)
    try:
        jobs = [job_for(prompt, args) for prompt in prompts]  # every bad input before any work
    except JobError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    report = sys.stderr if args.json else sys.stdout
    header = f"  #  {'prompt':<18}  chamfer  colour  shape        colour          dSat    dBri  seconds"
    print(f"bench quality: preset {args.preset}, seed {args.seed}, {len(prompts)} prompts"
          + (f", steps {args.steps}" if args.steps else "")
          + (f", override {json.dumps(args.override)}" if args.override else ""), file=report, flush=True)
    print(header, file=report, flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        for i, (prompt, job) in enumerate(zip(prompts, jobs)):
            out_dir = root / f"{i:02d}_{prompt.replace(' ', '_')}"
            results.append(run_one(job, args, out_dir))
            print(_row(i, results[-1]), file=report, flush=True)
    total = summarise(results)
    if args.json:
        print(json.dumps({"benchmark": "quality", "preset": args.preset, "seed": args.seed, "steps": args.steps,
                          "override": args.override, "device": args.device or "auto", **total,
                          "results": results}))
    else:
        print(f"shape R-precision {total['shape_r_precision']:.3f}  colour R-precision "
              f"{total['colour_r_precision']:.3f}  median Chamfer "
              + (f"{100 * total['median_chamfer']:.2f}%" if total["median_chamfer"] is not None else "n/a")
              + "  median colour error "
              + (f"{total['median_colour_error']:.3f}" if total["median_colour_error"] is not None else "n/a")
              + "  saturation ratio " + figure_text(total["saturation_ratio"], ".3f")
              + "  brightness ratio " + figure_text(total["brightness_ratio"], ".3f")
              + f"  {total['seconds_per_asset']:.1f} s per asset (max {total['max_seconds']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
