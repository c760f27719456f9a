"""Pocket benches' assets, several at once: each in its own process on its share of the cores.

A 32 px pocket asset keeps one core busy better than two, so the benches (janus, blockout,
saturation) run `--jobs` assets side by side and report each as it finishes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# Assets at a time: two at once made 1.5x the assets per minute on a 2-core CPU.
JOBS = min(2, os.cpu_count() or 1)


def _one_process_share(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def run_all(work: list[tuple[dict, Path]], args: argparse.Namespace, report, judge) -> list[dict]:
    """`judge(job, args, out_dir)` (a module-level function, for the worker processes) every
    (job, out_dir), `args.jobs` at a time; results in the order given, each passed to
    `report(i, result)` as it finishes."""
    if args.jobs == 1 or len(work) == 1:
        results = []
        for i, (job, out_dir) in enumerate(work):
            results.append(judge(job, args, out_dir))
            report(i, results[-1])
        return results
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    results: list[dict | None] = [None] * len(work)
    # spawn: a forked child would inherit torch's thread pool and locks mid-state.
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_process_share, initargs=(threads,)) as pool:
        pending = {pool.submit(judge, job, args, out_dir): i for i, (job, out_dir) in enumerate(work)}
        for future in as_completed(pending):
            i = pending[future]
            results[i] = future.result()
            report(i, results[i])
    return results


def check_run_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What every pocket bench refuses alike: --jobs below 1, a negative --steps, and an --override
    (when it has one) that is not a JSON object of job keys."""
    if args.jobs < 1:
        p.error(f"--jobs: must be at least 1, got {args.jobs}")
    if args.steps < 0:
        p.error(f"--steps: must be 0 (the preset's) or more, got {args.steps}")
    if not isinstance(getattr(args, "override", {}), dict):
        p.error("--override: must be a JSON object of job keys")


def check_methods_and_prompts(p: argparse.ArgumentParser, args: argparse.Namespace, known, world) -> None:
    """--methods all among `known`, and every --prompts a pocket prompt (named, with the known ones)."""
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        p.error(f"--methods: unknown {', '.join(map(repr, unknown))}; methods: {', '.join(known)}")
    check_run_options(p, args)
    for prompt in args.prompts:
        try:
            world.parse_prompt(prompt)
        except ValueError as error:
            p.error(f"--prompts: {error}")


def run_plan(plan: list[tuple], args: argparse.Namespace, name: str, row, judge) -> dict[str, list[dict]]:
    """A per-method bench's work: every (method, prompt, seed, job) of `plan` run and judged, each
    reported as `row(method, result)` as it finishes (on stderr under --json), in folders
    OUT/<method>/<n>_<seed>_<prompt> (a temporary folder without --out); results by method."""
    report = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        work = [(job, root / method / f"{i:03d}_{seed}_{prompt.replace(' ', '_')}")
                for i, (method, prompt, seed, job) in enumerate(plan)]
        done = run_all(work, args, lambda i, r: print(row(plan[i][0], r), file=report, flush=True), judge=judge)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for (method, *_), result in zip(plan, done):
        results[method].append(result)
    return results
