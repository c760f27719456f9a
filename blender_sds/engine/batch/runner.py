"""The batch's driver on Ray: join a cluster (or start one here), run one task per job, collect the results.

Each job is one Ray task asking for what it needs (`--cpus-per-job`, `--gpus-per-job`: one GPU
when the cluster has any), so Ray places as many at once as the cluster holds and queues the
rest. A task that raises nothing returns its outcome (tasks.run_one); a task whose worker
process died (killed, out of memory, a crash in native code, a machine that left) is re-run
by Ray up to `--max-retries` times, and after that is recorded failed with what Ray said, its
folder's status set to failed, while the other jobs go on.
"""
from __future__ import annotations

import logging
import secrets
import socket
import time
from pathlib import Path

from ...results import MESH_FILE, STATUS_FILE, read_status
from .files import write_atomic, write_json
from .progress import JobBoard
from .tasks import marker_name, run_one

POLL_SECONDS = 0.5


class ClusterError(RuntimeError):
    """Ray could not be reached or cannot run these jobs; the message names the flag."""


def connect(address: str | None, num_cpus: int | None) -> dict:
    """ray.init: join the cluster at `address` ('auto': the one this machine belongs to), or start
    a local one of `num_cpus` CPUs (all of them when None). Returns the cluster's resources."""
    try:
        import ray
    except ImportError:  # an optional extra: the add-on's single-job worker environment goes without
        raise ClusterError("batch needs Ray, which this Python lacks: pip install 'ray==2.60.0' "
                           "(or pip install -e '.[batch]' in a checkout)") from None

    options = {"log_to_driver": False, "logging_level": logging.WARNING}  # workers' output: Ray's log files
    if address:
        probe(address)
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not address:
            raise ClusterError(f"--local: could not start a local Ray cluster ({why})") from None
        raise ClusterError(f"--ray {address}: could not join the Ray cluster ({why}); a cluster with token "
                           f"authentication needs RAY_AUTH_MODE=token here too, and its token (RAY_AUTH_TOKEN or "
                           f"~/.ray/auth_token, from `ray get-auth-token` on the head)") from None
    return largest_node()


def probe(address: str, timeout: float = 5.0) -> None:
    """Refuse a HOST:PORT that nothing answers at: ray.init would retry it for minutes, saying little."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"--ray {address}: nothing answers there ({exc.strerror or exc}); start the cluster's head "
                           f"with `ray start --head --port={port}` on {host}, or check the address") from None


def largest_node() -> dict:
    """The most CPUs and GPUs any one live node offers: a job asking for more would wait forever."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return {"CPU": max((r.get("CPU", 0) for r in nodes), default=0),
            "GPU": max((r.get("GPU", 0) for r in nodes), default=0), "nodes": len(nodes)}


def check_fits(node: dict, cpus: float, gpus: float, local: bool) -> str | None:
    """None if some node can take a job of `cpus` and `gpus`; else the problem (an error on a local
    cluster, which never grows; a warning on a cluster, which an autoscaler may grow)."""
    for name, want, flag in (("CPU", cpus, "--cpus-per-job"), ("GPU", gpus, "--gpus-per-job")):
        if want > node[name]:
            return (f"{flag} {want:g}: no node of the {'local cluster' if local else 'cluster'} has {want:g} "
                    f"{name}s (the largest has {node[name]:g})")
    return None


def shutdown() -> None:
    import ray
    if ray.is_initialized():
        ray.shutdown()


def lost_message(exc, attempts: int, max_retries: int, pid) -> str:
    """What the summary says of a job whose task Ray gave up on."""
    import ray.exceptions as rx

    tried = f"tried {attempts} time{'s' if attempts != 1 else ''} (--max-retries {max_retries})"
    worker = f"its Ray worker process{f' (pid {pid})' if pid else ''}"
    if isinstance(exc, rx.OutOfMemoryError):
        return (f"Ray's memory monitor ended {worker}: the machine ran out of memory (RAM); {tried}. Give each "
                f"job more of a machine (--cpus-per-job) or lower render.resolution")
    if isinstance(exc, rx.NodeDiedError):
        return f"the machine running it left the Ray cluster; {tried}"
    if isinstance(exc, rx.TaskCancelledError):
        return "cancelled before it finished; run the batch again to continue"
    if isinstance(exc, rx.WorkerCrashedError):
        return (f"{worker} died while running it (killed, e.g. by SIGKILL or the system's out-of-memory "
                f"killer, or crashed in native code); {tried}")
    if isinstance(exc, rx.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        text = str(cause).splitlines()[0] if str(cause) else ""
        return f"{type(cause).__name__}: {text} (the task could not run: is blender-sds installed on every node?)"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def store_payload(folder: Path, payload: dict) -> None:
    """Write a result that came back from a machine without the output folder, in run_job's order:
    status.json, then mesh.npz last, so the folder is a result only once it is whole."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MESH_FILE).unlink(missing_ok=True)
    last = [STATUS_FILE, MESH_FILE]
    for name in sorted(payload, key=lambda n: last.index(n) if n in last else -1):
        if Path(name).name == name and not name.startswith("."):  # names a worker made; nothing else
            write_atomic(folder / name, payload[name])


def mark_failed(folder: Path, job: dict, message: str) -> None:
    """Make a lost job's folder say failed (read_status would say interrupted, or nothing), so a rerun
    leaves it to --retry-failed like any failed job."""
    folder.mkdir(parents=True, exist_ok=True)
    if read_status(folder)["state"] == "failed":
        return
    if not (folder / "job.json").is_file():
        write_json(folder / "job.json", job)
    write_json(folder / STATUS_FILE, {"state": "failed", "message": message, "steps": int(job["steps"])})


def execute(items, out_dir: Path, *, cpus: float, gpus: float, max_retries: int, progress, on_done) -> None:
    """Run every planned item as a Ray task; call `on_done(item, outcome)` as each finishes.

    `outcome`: status, seconds, message, worker (pid, node, judge loads), attempts."""
    import ray

    task = ray.remote(max_calls=0)(run_one)  # keep the worker (and its loaded judge) for the next job
    board = ray.remote(num_cpus=0)(JobBoard).remote()
    token = secrets.token_hex(8)
    marker = out_dir / marker_name(token)
    marker.write_text("a batch is running into this folder; its workers write here\n", encoding="utf-8")
    attempts: dict[int, list] = {}  # job index -> pid of each attempt, as the board heard of them
    began: dict[int, float] = {}
    pending = {}
    try:
        for item in items:
            ref = task.options(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries, retry_exceptions=False,
                               name=f"sds-batch {item.folder}").remote(
                item.job, item.index, item.folder, str(out_dir), token, cpus, gpus > 0, board)
            pending[ref] = item

        def drain() -> None:
            nonlocal board
            if board is None:
                return
            try:
                events = ray.get(board.drain.remote(), timeout=30)
            except (ray.exceptions.RayError, TimeoutError):  # progress is lost, the jobs go on
                board = None
                return
            for event in events:
                if event.get("type") == "attempt":
                    attempts.setdefault(event["job"], []).append(event.get("pid"))
                    began.setdefault(event["job"], time.monotonic())
                progress.event(event)

        while pending:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
            drain()
            for ref in done:
                item = pending.pop(ref)
                pids = attempts.get(item.index, [])
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    message = lost_message(exc, max(len(pids), 1), max_retries, pids[-1] if pids else None)
                    seconds = time.monotonic() - began[item.index] if item.index in began else 0.0
                    outcome = {"status": "failed", "message": message, "seconds": seconds}
                    mark_failed(out_dir / item.folder, item.job, message)
                payload = outcome.pop("payload", None)
                if payload:
                    store_payload(out_dir / item.folder, payload)
                if outcome["status"] == "complete" and len(pids) > 1:
                    outcome["message"] = (f"complete after {len(pids)} attempts: Ray re-ran it when its worker "
                                          f"(pid {pids[-2]}) was lost")
                outcome["attempts"] = max(len(pids), 1)
                on_done(item, outcome)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        marker.unlink(missing_ok=True)
