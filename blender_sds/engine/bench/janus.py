"""`python -m blender_sds.engine bench janus`: the Janus problem, measured, and what each remedy does to it.

Runs each method (a named set of guidance keys, blender_sds/kinds/builtin.py) over marked
prompts ("a red cube with a white front") and a few plain ones, with the camera-blind
pocket teacher whose data are front-biased like a photo collection (`guidance.front_bias`)
and, by default, the plain ones' figures to show a remedy costs no shape or colour. Per
method: Janus rate and front-kept rate over the marked assets (pocket/janus.py), shape and
colour R-precision, median Chamfer and colour error over the plain ones, saturation and
brightness ratios over all of them (each against its own truth, mark included), seconds per
asset and the judge's predictions per step. docs/QUALITY.md "Janus" keeps the last table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from ... import kinds
from ...job import JobError, merge_overrides, validate_job
from ...results import LOG_FILE, MESH_FILE
from ..pocket import janus, metrics, world
from .parallel import JOBS, check_methods_and_prompts, run_plan
from .quality import figure_text, run_one, summarise

# Four shapes and four body colours, each mark a contrasting colour; two plain objects.
MARKED = ("a red cube with a white front", "a blue sphere with a yellow front",
          "a green cylinder with a white front", "a purple pyramid with a yellow front")
PLAIN = ("a yellow cone", "a white torus")
SEEDS = (0, 1)
METHODS = ("sds", "view-prompts", "perp-neg", "debiased")
PRESET = "draft"
# Over the draft preset's 400: a mark is the last thing a run settles (at 400 steps the purple
# pyramid's yellow front was still forming on one seed of five, and kept at 500 and 600).
STEPS = 500
# The lab: the camera-blind teacher (pose-matched data would tell the judge every camera,
# which is exactly what removes Janus).
LAB = {"guidance": {"kind": "pocket", "pose_matched": False}}


def _list(text: str, what: str, parse=str, sep: str = ",") -> list:
    items = [item.strip() for item in text.split(sep) if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"no {what} in {text!r}")
    return [parse(item) for item in items]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m blender_sds.engine bench janus",
                                description="Measure the Janus rate of each method on the pocket world's marked "
                                            "objects, against a front-biased camera-blind teacher.")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated methods ({', '.join(kinds.method_names())}; default all)")
    p.add_argument("--prompts", default=None,
                   help="semicolon-separated prompts, marked and plain (default: "
                        f"{len(MARKED)} marked and {len(PLAIN)} plain)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                   help="comma-separated seeds for the marked prompts; plain prompts run on the first "
                        "(they check shape and colour, not Janus; default 0,1)")
    p.add_argument("--preset", choices=("draft", "standard", "high"), default=PRESET)
    p.add_argument("--steps", type=int, default=STEPS, help=f"steps per asset (default {STEPS}; 0: the preset's)")
    p.add_argument("--jobs", type=int, default=JOBS,
                   help=f"assets run at once, each in its own process on its share of the cores (default {JOBS})")
    p.add_argument("--front-bias", type=float, default=None,
                   help="the teacher's share of front views (default: the kind's, docs/JOB.md)")
    p.add_argument("--override", default=None, metavar="JSON", help="job keys merged over every job")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    p.add_argument("--out", default=None, help="keep each result in OUT/<method>/<n>_<prompt>")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    try:
        args.methods = _list(args.methods, "methods")
        args.seeds = _list(args.seeds, "seeds", int)
        args.prompts = _list(args.prompts, "prompts", sep=";") if args.prompts else list(MARKED + PLAIN)
        args.override = json.loads(args.override) if args.override else {}
    except (argparse.ArgumentTypeError, ValueError) as error:
        p.error(str(error))
    check_methods_and_prompts(p, args, kinds.method_names(), world)
    return args


def job_for(method: str, prompt: str, seed: int, args: argparse.Namespace) -> dict:
    raw = merge_overrides({"version": 1, "prompt": prompt, "seed": seed, "preset": args.preset},
                          merge_overrides(LAB, {"guidance": dict(kinds.method(method).guidance)}))
    if args.steps:
        raw["steps"] = args.steps
    if args.front_bias is not None:
        raw["guidance"]["front_bias"] = args.front_bias
    return validate_job(merge_overrides(raw, args.override))


def predictions_per_step(out_dir: Path) -> float | None:
    """The judge's evaluations per step, averaged over the steps the run's log reports."""
    counts = []
    if (out_dir / LOG_FILE).exists():
        for line in (out_dir / LOG_FILE).read_text().splitlines():
            event = json.loads(line)
            if event.get("type") == "progress" and "predictions" in event.get("figures", {}):
                counts.append(event["figures"]["predictions"])
    return statistics.fmean(counts) if counts else None


def judge_one(job: dict, args: argparse.Namespace, out_dir: Path) -> dict:
    result = run_one(job, args, out_dir)
    result.update(seed=job["seed"], predictions=predictions_per_step(out_dir))
    if world.mark_srgb(job["prompt"]) is None:
        return result
    if result.get("error"):
        result.update(janus=True, front_kept=False, mark_share=None)  # no mesh: it kept nothing
        return result
    with np.load(out_dir / MESH_FILE) as data:
        mesh = {k: data[k] for k in data.files}
    result.update(janus.janus_figures(mesh, job["prompt"], job["bounds"]))
    return result


def method_summary(results: list[dict]) -> dict:
    marked = [r for r in results if "janus" in r]
    plain = [r for r in results if "janus" not in r]
    quality = summarise(plain) if plain else {}
    predictions = [r["predictions"] for r in results if r["predictions"] is not None]
    fidelity = metrics.colour_fidelity(results)  # every asset: a marked one against its marked truth
    return {"janus_rate": janus.janus_rate(marked) if marked else None,
            "front_kept_rate": janus.front_kept_rate(marked) if marked else None,
            "marked_assets": len(marked), "plain_assets": len(plain),
            "shape_r_precision": quality.get("shape_r_precision"),
            "colour_r_precision": quality.get("colour_r_precision"),
            "median_chamfer": quality.get("median_chamfer"), "median_colour_error": quality.get("median_colour_error"),
            **{key: value if np.isfinite(value) else None for key, value in fidelity.items()},
            "seconds_per_asset": statistics.fmean(r["seconds"] for r in results),
            "max_seconds": max(r["seconds"] for r in results),
            "predictions_per_step": statistics.fmean(predictions) if predictions else None}


def _asset_row(method: str, r: dict) -> str:
    front = "" if "janus" not in r else (f"janus {'YES' if r['janus'] else 'no ':<4}front "
                                         f"{'kept' if r['front_kept'] else 'LOST'}")
    shape = "" if "janus" in r or r.get("error") else (f"shape {'ok' if r['shape_ok'] else '--'} "
                                                        f"colour {'ok' if r['colour_ok'] else '--'}")
    colour = "" if r.get("error") else (f"dSat {figure_text(r['saturation_difference'])} "
                                         f"dBri {figure_text(r['brightness_difference'])}")
    return (f"{method:<13} {r['prompt']:<36} seed {r['seed']:<3} {front or shape:<24} {colour:<23} "
            f"{r['seconds']:6.1f} s")


def print_table(summary: dict) -> None:
    print(f"{'method':<13} {'janus':>6} {'front':>6} {'shapeRP':>8} {'colourRP':>9} {'chamfer':>8} "
          f"{'colour':>7} {'satur':>6} {'bright':>6} {'s/asset':>8} {'preds':>6}")
    for name, m in summary.items():
        chamfer = None if m["median_chamfer"] is None else 100 * m["median_chamfer"]
        print(f"{name:<13} {figure_text(m['janus_rate'], '6.2f')} {figure_text(m['front_kept_rate'], '6.2f')} "
              f"{figure_text(m['shape_r_precision'], '8.2f')} {figure_text(m['colour_r_precision'], '9.2f')} "
              f"{figure_text(chamfer, '7.2f')}% {figure_text(m['median_colour_error'], '7.3f')} "
              f"{figure_text(m['saturation_ratio'], '6.3f')} {figure_text(m['brightness_ratio'], '6.3f')} "
              f"{m['seconds_per_asset']:8.1f} {figure_text(m['predictions_per_step'], '6.1f')}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:  # every bad input before any work
        plan = [(m, p, s, job_for(m, p, s, args)) for m in args.methods for p in args.prompts
                for s in (args.seeds if world.mark_srgb(p) is not None else args.seeds[:1])]
    except JobError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = sys.stderr if args.json else sys.stdout
    print(f"bench janus: {len(args.methods)} methods x {len(plan) // len(args.methods)} assets "
          f"({len(args.prompts)} prompts, seeds {','.join(map(str, args.seeds))}), preset {args.preset}"
          + (f", steps {args.steps}" if args.steps else "") + f", {args.jobs} at a time", file=report, flush=True)
    results = run_plan(plan, args, "janus", _asset_row, judge_one)
    summary = {m: method_summary(rs) for m, rs in results.items()}
    if args.json:
        print(json.dumps({"benchmark": "janus", "preset": args.preset, "steps": args.steps, "seeds": args.seeds,
                          "prompts": args.prompts, "front_bias": plan[0][3]["guidance"]["front_bias"],
                          "override": args.override, "methods": summary, "results": results}))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
