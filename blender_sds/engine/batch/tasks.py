"""The Ray task: one job into its result folder, on whichever machine Ray gave it.

`run_one` is `run`'s work (train.run.run_job) with three things a batch adds:

- the judge's weights stay loaded in the worker process between jobs (weights_cache), and
  the remote function is made with `max_calls=0` so Ray keeps the worker for the next job
  (its default for GPU tasks is a fresh process per task, which would load them every time);
- torch's CPU thread count is the job's CPUs, set explicitly: reductions split over a
  different number of threads round differently, and `run` on one thread must give the same
  mesh as a batch job on one CPU;
- the folder is written in place when the worker sees the driver's output folder (the same
  machine, or a shared file system: the driver leaves a marker file there to tell), and
  otherwise in a scratch folder whose files come back with the result for the driver to write.

A job's own failure (bad input found late, out of memory, a mesh that cannot be made) comes
back as a failed result with its message; only a lost worker reaches Ray, which retries it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from ...results import finished_files

MARKER = ".batch-"  # DIR/.batch-<token>: present while a batch runs; a worker that sees it writes in place


def marker_name(token: str) -> str:
    return f"{MARKER}{token}"


def describe_failure(exc: BaseException) -> str:
    """One line for a job's failure, as `run` would print it after 'error: '."""
    from ..guidance.predictors.model_source import ModelSourceError
    from ..scene.isosurface import MeshError
    from ..train.run import JobCancelled, RunFailed

    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, (RunFailed, MeshError, ModelSourceError, ValueError, FileNotFoundError, JobCancelled)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _report(board, index: int, event: dict) -> None:
    """Send an event to the driver's board; a board that is gone must not fail the job."""
    if board is None:
        return
    try:
        board.report.remote(index, event)
    except Exception:  # noqa: BLE001 - progress is a courtesy, the result is what matters
        pass


def run_one(job: dict, index: int, folder: str, out_root: str, token: str, threads: int, gpu: bool,
            board=None) -> dict:
    """Run one normalised job into `out_root/folder` (or a scratch copy of it); return its outcome."""
    import torch

    from ..guidance.predictors import weights_cache
    from ..train.run import run_job

    started = time.monotonic()
    if not gpu:
        torch.set_num_threads(max(1, int(threads)))
    weights_cache.enable()
    shared = (Path(out_root) / marker_name(token)).is_file()
    scratch = None if shared else Path(tempfile.mkdtemp(prefix="sds-batch-"))
    out = (Path(out_root) if shared else scratch) / folder
    worker = {"pid": os.getpid(), "node": _node(), "threads": torch.get_num_threads()}
    _report(board, index, {"type": "attempt", **worker})
    status, message = "complete", ""
    try:
        run_job(job, out, on_event=lambda event: _report(board, index, event), device="cuda" if gpu else "cpu")
    except Exception as exc:  # noqa: BLE001 - every failure of the job is its result's message
        status, message = "failed", describe_failure(exc)
    result = {"status": status, "message": message, "seconds": round(time.monotonic() - started, 3),
              "worker": {**worker, **{f"judge_{k}": v for k, v in weights_cache.stats().items()}}}
    if scratch is not None:
        try:
            result["payload"] = {name: (out / name).read_bytes() for name in finished_files(out)}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def _node() -> str:
    try:
        import ray
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (tests call run_one directly)
        return "local"
