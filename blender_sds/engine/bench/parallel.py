"""Pocket benches' assets, several at once: each in its own process on its share of the cores.

A 32 px pocket asset keeps one core busy better than two, so the benches (janus, blockout,
saturation) run `--jobs` assets side by side and report each as it finishes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
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
