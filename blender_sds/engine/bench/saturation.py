"""`python -m blender_sds.engine bench saturation`: SDS's over-saturation, measured, and what its successors do to it.

Runs each method over plain pocket prompts (by default bench quality's 12-prompt sample,
which covers every shape and colour) with the pose-matched pocket teacher, and judges every
result against its known truth: pooled saturation and brightness ratios (1.0 faithful,
above 1 garish), median colour error, shape and colour R-precision, median Chamfer, seconds
per asset, the judge's predictions per step (teacher or UNet evaluations, from the run's
log) and peak memory. Methods are the registry's (blender_sds/kinds/builtin.py: nfsd, csd,
vsd, esd, ...) plus two baselines: "sds" at the kind's SDS scale (CFG 20 for the pocket
world, its counterpart of Stable Diffusion's 100) and "sds-7.5" at the CFG images are
sampled at (the kind's sampling_scale), which the successors start from.
docs/QUALITY.md "Saturation" keeps the last table.

    python -m blender_sds.engine bench saturation [--methods sds,sds-7.5,nfsd,csd,vsd,esd]
        [--prompts "a red cube;..."] [--seeds 0] [--preset standard] [--steps N] [--jobs 2]
        [--override JSON] [--device D] [--out DIR] [--json]
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import statistics
import sys
from pathlib import Path

from ... import kinds
from ...job import JobError, merge_overrides, validate_job
from ..pocket import world
from . import profiling
from .janus import _list, predictions_per_step
from .parallel import JOBS, check_methods_and_prompts, run_plan
from .quality import DEFAULT_SAMPLE, covering_sample, figure_text, run_one, summarise

KIND = "pocket"
SDS = "sds"
# SDS at the CFG images are sampled at: the scale NFSD, CSD and VSD start from, so what the
# rule changes is told apart from what the lower scale alone does.
SDS_AT_SAMPLING = f"sds-{kinds.kind(KIND).sampling_scale:g}"
METHODS = (SDS, SDS_AT_SAMPLING, "nfsd", "csd", "vsd", "esd")
PRESET = "standard"  # bench quality's: the default an artist's pocket job runs at
MEMORY_MEASURES = {"cuda": "peak CUDA memory allocated over an asset's run (torch.cuda.max_memory_allocated), "
                           "the median asset's",
                   "host": "peak host RSS over an asset's run and judging above the RSS before it (Linux VmHWM - "
                           "VmRSS), the median asset's; rough: the allocator keeps freed memory"}


def known_methods() -> tuple[str, ...]:
    """The baselines, then every registry method."""
    return tuple(dict.fromkeys((SDS, SDS_AT_SAMPLING, *kinds.method_names())))


def method_guidance(name: str) -> dict:
    """A method's guidance keys for a pocket job.

    The pose-matched pocket teacher renders its data at each judged camera, so direction
    prompts tell it nothing it does not know: a method's view_dependent is turned off unless
    its rule mixes the direction prompts themselves (Perp-Neg).
    """
    if name == SDS_AT_SAMPLING:
        guidance = {**kinds.method(SDS).guidance, "scale": kinds.kind(KIND).sampling_scale}
    else:
        guidance = copy.deepcopy(kinds.method(name).guidance)
    if not kinds.rule(guidance.get("rule", kinds.DEFAULT_RULE)).view_prompts:
        guidance["view_dependent"] = False
    return {"kind": KIND, **guidance}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m blender_sds.engine bench saturation",
                                description="Measure each method's saturation, brightness, colour and shape "
                                            "against the pocket world's truth, with its cost.")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated methods ({', '.join(known_methods())}; default {','.join(METHODS)})")
    p.add_argument("--prompts", default=None,
                   help=f"semicolon-separated plain pocket prompts (default: bench quality's {DEFAULT_SAMPLE}, "
                        "every shape and colour)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, each prompt run on each (default 0)")
    p.add_argument("--preset", choices=("draft", "standard", "high"), default=PRESET)
    p.add_argument("--steps", type=int, default=0, help="steps per asset (default 0: the preset's)")
    p.add_argument("--jobs", type=int, default=JOBS,
                   help=f"assets run at once, each in its own process on its share of the cores (default {JOBS})")
    p.add_argument("--override", default=None, metavar="JSON", help="job keys merged over every job")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    p.add_argument("--out", default=None, help="keep each result in OUT/<method>/<n>_<seed>_<prompt>")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    try:
        args.methods = list(dict.fromkeys(_list(args.methods, "methods")))
        args.seeds = _list(args.seeds, "seeds", int)
        args.prompts = (_list(args.prompts, "prompts", sep=";") if args.prompts
                        else covering_sample(DEFAULT_SAMPLE, args.seeds[0]))
        args.override = json.loads(args.override) if args.override else {}
    except (argparse.ArgumentTypeError, ValueError) as error:
        p.error(str(error))
    check_methods_and_prompts(p, args, known_methods(), world)
    for prompt in args.prompts:
        if world.mark_srgb(prompt) is not None:
            p.error(f"--prompts: {prompt!r} is marked; saturation is measured on plain objects "
                    "(bench janus takes marked ones)")
    return args


def job_for(method: str, prompt: str, seed: int, args: argparse.Namespace) -> dict:
    raw = {"version": 1, "prompt": prompt, "seed": seed, "preset": args.preset,
           "guidance": method_guidance(method)}
    if args.steps:
        raw["steps"] = args.steps
    return validate_job(merge_overrides(raw, args.override))


def judge_asset(job: dict, args: argparse.Namespace, out_dir: Path) -> dict:
    """One asset run and judged, with its predictions per step and peak memory."""
    import torch

    from ..device import pick_device
    importlib.import_module("..train.run", __package__)  # before the baseline: the engine's modules are no asset's cost

    device = pick_device(args.device)
    before = profiling.host_rss_mb()
    windowed = profiling.reset_peak_host_rss()
    profiling.reset_peak_gpu(device)
    result = run_one(job, args, out_dir)
    peak = profiling.peak_host_rss_mb()
    result.update(seed=job["seed"], predictions=predictions_per_step(out_dir),
                  peak_host_rss_mb=peak,
                  peak_host_rss_delta_mb=peak - before if windowed and None not in (peak, before) else None,
                  peak_gpu_mb=profiling.peak_gpu_mb(device)["allocated"], device=torch.device(device).type)
    return result


def method_summary(results: list[dict]) -> dict:
    quality = summarise(results)
    predictions = [r["predictions"] for r in results if r["predictions"] is not None]
    on_cuda = any(r["device"] == "cuda" for r in results)
    memory = [r["peak_gpu_mb"] if on_cuda else r["peak_host_rss_delta_mb"] for r in results]
    memory = [m for m in memory if m is not None]
    return {key: quality[key] for key in ("saturation_ratio", "brightness_ratio", "median_colour_error",
                                          "shape_r_precision", "colour_r_precision", "median_chamfer",
                                          "seconds_per_asset", "max_seconds", "assets")} | {
        "failed": sum(bool(r.get("error")) for r in results),
        "predictions_per_step": statistics.fmean(predictions) if predictions else None,
        # The median asset's: a process's first asset also pays its first-use caches (~200 MB of host RSS).
        "peak_memory_mb": statistics.median(memory) if memory else None,
        "peak_memory_measure": "cuda" if on_cuda else "host",
        "peak_host_rss_mb": max((r["peak_host_rss_mb"] for r in results if r["peak_host_rss_mb"] is not None),
                                default=None)}


def _asset_row(method: str, r: dict) -> str:
    if r.get("error"):
        seen = f"no mesh: {r['error'][:48]}"
    else:
        seen = (f"shape {'ok' if r['shape_ok'] else '--'} colour {'ok' if r['colour_ok'] else '--'} "
                f"err {r['colour_error']:.3f} dSat {figure_text(r['saturation_difference'])} "
                f"dBri {figure_text(r['brightness_difference'])}")
    return f"{method:<9} {r['prompt']:<18} seed {r['seed']:<3} {seen:<62} {r['seconds']:6.1f} s"


def print_table(summary: dict) -> None:
    print(f"{'method':<9} {'satur':>6} {'bright':>6} {'colour':>7} {'shapeRP':>8} {'colourRP':>9} {'chamfer':>8} "
          f"{'s/asset':>8} {'preds':>6} {'peak MB':>8}")
    for name, m in summary.items():
        chamfer = None if m["median_chamfer"] is None else 100 * m["median_chamfer"]
        print(f"{name:<9} {figure_text(m['saturation_ratio'], '6.3f')} {figure_text(m['brightness_ratio'], '6.3f')} "
              f"{figure_text(m['median_colour_error'], '7.3f')} {figure_text(m['shape_r_precision'], '8.2f')} "
              f"{figure_text(m['colour_r_precision'], '9.2f')} {figure_text(chamfer, '7.2f')}% "
              f"{m['seconds_per_asset']:8.1f} {figure_text(m['predictions_per_step'], '6.1f')} "
              f"{figure_text(m['peak_memory_mb'], '8.0f')}")
    measures = {m["peak_memory_measure"] for m in summary.values()}
    print("peak MB: " + "; ".join(MEMORY_MEASURES[k] for k in sorted(measures)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:  # every bad input before any work
        plan = [(m, p, s, job_for(m, p, s, args)) for m in args.methods for p in args.prompts for s in args.seeds]
    except JobError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = sys.stderr if args.json else sys.stdout
    assets = len(args.prompts) * len(args.seeds)
    print(f"bench saturation: {len(args.methods)} methods x {assets} assets ({len(args.prompts)} prompts, seeds "
          f"{','.join(map(str, args.seeds))}), preset {args.preset}" + (f", steps {args.steps}" if args.steps else "")
          + f", {args.jobs} at a time", file=report, flush=True)
    results = run_plan(plan, args, "saturation", _asset_row, judge_asset)
    summary = {m: method_summary(rs) for m, rs in results.items()}
    if args.json:
        print(json.dumps({"benchmark": "saturation", "methods": summary, "assets": assets, "preset": args.preset,
                          "steps": args.steps, "seeds": args.seeds, "prompts": args.prompts,
                          "commit": profiling.git_commit(), "device": results[args.methods[0]][0]["device"],
                          "override": args.override,
                          "peak_memory_measures": {k: MEMORY_MEASURES[k] for k in
                                                   {m["peak_memory_measure"] for m in summary.values()}},
                          "guidance": {m: plan[i * assets][3]["guidance"] for i, m in enumerate(args.methods)},
                          "results": results}))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
