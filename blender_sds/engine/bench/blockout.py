"""`python -m blender_sds.engine bench blockout`: what starting from a rough mesh buys, and what keep_shape does.

The camera-blind pocket teacher cannot tell a pyramid from a cone (docs/QUALITY.md), so a
pyramid started from the density blob comes back round. An artist's blockout says what the
2D judge cannot: this bench starts "a <colour> pyramid" from a jagged, polygon-soup
pyramid with its apex off-centre (pocket/blockout.py) under each `optim.keep_shape`
setting, and from the blob, and judges each result with the pocket yardstick: the shape it
is read as, Chamfer to the true pyramid, Chamfer to the blockout (how much of the start
stayed), colour error, saturation and brightness against the truth's (pooled ratios per
start). docs/QUALITY.md "Starting from a mesh" keeps the last table.

    python -m blender_sds.engine bench blockout [--starts blob,1,0.1,1:linear] [--colours red,green,...]
        [--preset standard] [--steps N] [--jobs 2] [--out DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from ...job import KEEP_SHAPE_SCHEDULES, JobError, merge_overrides, validate_job
from ...pocket_words import COLOUR_NAMES
from ...results import MESH_FILE
from ..pocket import metrics
from ..pocket.blockout import rough_pyramid
from .janus import LAB, _list
from .parallel import JOBS, check_run_options, run_all
from .quality import figure_text, run_one

STARTS = ("blob", "0", "1", "1:linear", "10")
BLOCKOUT_FILE = "blockout.npz"


def parse_start(text: str) -> tuple[float, str] | None:
    """'blob' -> None; 'W' or 'W:SCHEDULE' -> (keep_shape, schedule)."""
    if text == "blob":
        return None
    weight, _, schedule = text.partition(":")
    schedule = schedule or "constant"
    if schedule not in KEEP_SHAPE_SCHEDULES:
        raise argparse.ArgumentTypeError(f"start {text!r}: schedule must be one of {', '.join(KEEP_SHAPE_SCHEDULES)}")
    try:
        value = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"start {text!r}: 'blob', or a keep_shape weight (e.g. 1 or 1:linear)") \
            from None
    return value, schedule


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m blender_sds.engine bench blockout",
                                description="Start pocket pyramids from a rough blockout under each keep_shape "
                                            "setting, and from the blob, with the camera-blind teacher.")
    p.add_argument("--starts", default=",".join(STARTS),
                   help="comma-separated: blob, or optim.keep_shape weights with an optional :linear schedule "
                        f"(default {','.join(STARTS)})")
    p.add_argument("--colours", default=",".join(COLOUR_NAMES), help="pyramid colours (default all six)")
    p.add_argument("--seed", type=int, default=0, help="the runs' seed (each colour's blockout has its own)")
    p.add_argument("--preset", choices=("draft", "standard", "high"), default="standard")
    p.add_argument("--steps", type=int, default=0, help="steps per asset (0: the preset's)")
    p.add_argument("--jobs", type=int, default=JOBS, help=f"assets at once, one process each (default {JOBS})")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    p.add_argument("--out", default=None, help="keep each result in OUT/<start>/<colour>")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    try:
        args.starts = _list(args.starts, "starts")
        args.keep = {start: parse_start(start) for start in args.starts}
        args.colours = _list(args.colours, "colours")
    except argparse.ArgumentTypeError as error:
        p.error(str(error))
    unknown = [c for c in args.colours if c not in COLOUR_NAMES]
    if unknown:
        p.error(f"--colours: unknown {', '.join(map(repr, unknown))}; colours: {', '.join(COLOUR_NAMES)}")
    check_run_options(p, args)
    return args


def job_for(start: str, colour: str, args: argparse.Namespace, folder: Path) -> dict:
    raw = merge_overrides(LAB, {"version": 1, "prompt": f"a {colour} pyramid", "seed": args.seed,
                                "preset": args.preset,
                                "output": {"preview_every": 0, "checkpoint_every": 0, "progress_every": 50}})
    if args.steps:
        raw["steps"] = args.steps
    keep = args.keep[start]
    if keep is not None:
        raw["init"] = {"mesh": str(folder / BLOCKOUT_FILE)}
        raw["optim"] = {"keep_shape": keep[0], "keep_shape_schedule": keep[1]}
    return validate_job(raw)


def judge_start(job: dict, args: argparse.Namespace, out_dir: Path) -> dict:
    result = run_one(job, args, out_dir)
    result["blockout_chamfer"] = None
    if job["init"]["mesh"] and not result.get("error"):
        with np.load(out_dir / MESH_FILE) as data:
            points, _ = metrics.sample_surface({k: data[k] for k in data.files}, seed=1)
        with np.load(job["init"]["mesh"]) as data:
            start, _ = metrics.sample_surface({k: data[k] for k in data.files}, seed=2)
        result["blockout_chamfer"] = metrics.chamfer(points, start) / float(job["bounds"]["size"])
    return result


def start_summary(results: list[dict]) -> dict:
    def median(key):
        values = [r[key] for r in results if r.get(key) is not None]
        return statistics.median(values) if values else None
    fidelity = metrics.colour_fidelity(results)
    return {"pyramids": sum(bool(r["shape_ok"]) for r in results), "assets": len(results),
            "median_chamfer": median("chamfer"), "median_blockout_chamfer": median("blockout_chamfer"),
            "median_colour_error": median("colour_error"),
            **{key: value if np.isfinite(value) else None for key, value in fidelity.items()},
            "seconds_per_asset": statistics.fmean(r["seconds"] for r in results)}


def _percent(value) -> str:
    return "   n/a" if value is None else f"{100 * value:5.2f}%"


def print_table(summary: dict) -> None:
    print(f"{'start':<12} {'pyramids':>9} {'chamfer':>8} {'to start':>9} {'colour':>7} {'satur':>6} {'bright':>6} "
          f"{'s/asset':>8}")
    for name, m in summary.items():
        colour = "n/a" if m["median_colour_error"] is None else f"{m['median_colour_error']:.3f}"
        print(f"{name:<12} {m['pyramids']:>4} of {m['assets']:<2} {_percent(m['median_chamfer']):>8} "
              f"{_percent(m['median_blockout_chamfer']):>9} {colour:>7} {figure_text(m['saturation_ratio'], '.3f'):>6} "
              f"{figure_text(m['brightness_ratio'], '.3f'):>6} {m['seconds_per_asset']:8.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    report = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory(prefix="bench-blockout-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        blockouts = root / "blockouts"
        plan = []
        try:  # every bad input before any work
            for i, colour in enumerate(args.colours):
                folder = blockouts / colour
                folder.mkdir(parents=True, exist_ok=True)
                np.savez(folder / BLOCKOUT_FILE, **rough_pyramid(seed=COLOUR_NAMES.index(colour)))
                for start in args.starts:
                    plan.append((start, colour, job_for(start, colour, args, folder),
                                 root / start.replace(":", "-") / colour))
        except JobError as error:
            print(f"error: {error}", file=report if not args.json else sys.stderr)
            return 2
        print(f"bench blockout: {len(args.starts)} starts x {len(args.colours)} pyramids, preset {args.preset}"
              + (f", steps {args.steps}" if args.steps else "") + f", {args.jobs} at a time", file=report, flush=True)

        def row(i, r):
            start, colour = plan[i][:2]
            seen = r.get("error") or (f"{r['seen_shape']:<9} chamfer {100 * r['chamfer']:5.2f}%  "
                                      f"dSat {figure_text(r['saturation_difference'])} "
                                      f"dBri {figure_text(r['brightness_difference'])}")
            print(f"{start:<12} {colour:<7} {seen}  {r['seconds']:6.1f} s", file=report, flush=True)
        done = run_all([(job, out) for _, _, job, out in plan], args, row, judge=judge_start)
    results = {start: [r for (s, *_), r in zip(plan, done) if s == start] for start in args.starts}
    summary = {start: start_summary(rs) for start, rs in results.items()}
    if args.json:
        print(json.dumps({"benchmark": "blockout", "preset": args.preset, "steps": args.steps, "seed": args.seed,
                          "colours": args.colours, "starts": summary, "results": results}))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
