"""`python -m blender_sds.engine batch MANIFEST --out DIR [--ray ADDRESS | --local] ...`

Exit codes: 0 every job complete (made now or before), 1 some job failed (summary.json says
which and why), 2 bad input refused before anything started (the manifest, the template, a
flag, an output folder that holds other results), 130 interrupted (Ctrl-C: the summary is
written; running the same command again continues).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
INTERRUPTED = "the batch was interrupted before it finished; run the batch again to continue"


def add_arguments(parser) -> None:
    parser.add_argument("manifest", help="JSON lines of jobs (or of overrides with --template), or a text file "
                                         "of prompts with --template (docs/SCALING.md)")
    parser.add_argument("--out", required=True, help="the batch folder: one result folder a job, summary.json, "
                                                     "contact_sheet.png (created; a rerun continues it)")
    parser.add_argument("--template", default=None, help="the job (JSON) each line's prompt or overrides go into")
    parser.add_argument("--seeds", default=None, help="run each line once per seed: 0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="override every job's step count, as run --steps")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="join this Ray cluster (host:6379 as `ray start --head` prints, or auto)")
    where.add_argument("--local", action="store_true", help="start a Ray cluster on this machine (the default)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    parser.add_argument("--cpus-per-job", type=float, default=1.0, help="CPUs each job asks for; on the CPU also "
                                                                        "its torch threads (default 1)")
    parser.add_argument("--gpus-per-job", type=float, default=None,
                        help="GPUs each job asks for (default: 1 on a cluster with GPUs, else 0 and the CPU)")
    parser.add_argument("--max-retries", type=int, default=1,
                        help="times Ray re-runs a job whose worker process was lost (default 1)")
    parser.add_argument("--retry-failed", action="store_true", help="run again the jobs that failed before")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default=None,
                        help="bar on a terminal, JSON lines when piped (default)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _check_flags(args) -> str | None:
    if args.num_cpus is not None and (args.ray or args.num_cpus < 1):
        return "--num-cpus: only for a local cluster, and at least 1" if args.ray else "--num-cpus: must be at least 1"
    if not 0 < args.cpus_per_job <= 1024:
        return f"--cpus-per-job: must be more than 0 (and at most 1024), got {args.cpus_per_job:g}"
    if args.gpus_per_job is not None and not 0 <= args.gpus_per_job <= 64:
        return f"--gpus-per-job: must be 0 .. 64, got {args.gpus_per_job:g}"
    if not 0 <= args.max_retries <= 100:
        return f"--max-retries: must be 0 .. 100, got {args.max_retries}"
    return None


def main(args) -> int:
    from .manifest import ManifestError, parse_seeds, read_manifest
    from .plan import PlanError, plan
    from .progress import BatchProgress

    started = time.monotonic()
    problem = _check_flags(args)
    if problem:
        return _refuse(problem)
    out = Path(args.out).resolve()
    try:
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        entries = read_manifest(args.manifest, template=args.template, seeds=seeds, steps=args.steps)
        if out.exists() and not out.is_dir():
            return _refuse(f"--out {args.out}: is a file, not a folder")
        items = plan(entries, out, retry_failed=args.retry_failed)
        out.mkdir(parents=True, exist_ok=True)
    except (ManifestError, PlanError) as exc:
        return _refuse(str(exc))
    except OSError as exc:
        return _refuse(f"--out {args.out}: cannot be made ({exc.strerror or exc})")

    mode = args.progress or ("bar" if sys.stderr.isatty() else "json")
    saved = _own_stdout() if mode == "json" else None
    try:
        return _batch(args, items, out, BatchProgress(mode, stdout=saved), started)
    finally:
        if saved is not None:
            saved.flush()
            os.dup2(saved.fileno(), 1)
            saved.close()


def _own_stdout():
    """The JSON lines get the real stdout to themselves; fd 1 becomes stderr for everything else
    (Ray prints a lost worker's notice to the driver's stdout, and libraries may print too)."""
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    return stream


def _batch(args, items, out: Path, progress, started: float) -> int:
    """Run what the plan says to run, then write the summary and the contact sheet."""
    from .plan import FAILED_BEFORE, RUN, SKIP
    from .summary import Ledger, job_entry

    to_run = [item for item in items if item.action == RUN]
    ledger = Ledger(out, manifest=str(Path(args.manifest).resolve()), ran=len(to_run), cluster=None)
    ledger.started = started
    for item in items:
        if item.action == SKIP:
            ledger.entries[item.index] = job_entry(item, out, "skipped", message="complete before: skipped")
        elif item.action == FAILED_BEFORE:
            ledger.entries[item.index] = job_entry(item, out, "failed", message=f"{item.message} (failed before; "
                                                                                f"--retry-failed runs it again)")
    progress.start(jobs=len(items), to_run=len(to_run), skipped=sum(i.action == SKIP for i in items),
                   failed_before=sum(i.action == FAILED_BEFORE for i in items), out=str(out))
    code = EXIT_OK
    try:
        if to_run:
            _run(args, to_run, out, progress, ledger)
    except _Refused as exc:
        progress.close()
        return _refuse(str(exc))
    except KeyboardInterrupt:
        code = EXIT_CANCELLED
        print("interrupted: the summary says what finished; the same command continues the batch", file=sys.stderr)
    finally:
        if to_run:
            from .runner import shutdown
            shutdown()
    for item in items:  # interrupted: what never finished is failed in the summary, and runs again next time
        if item.index not in ledger.entries:
            ledger.entries[item.index] = job_entry(item, out, "failed", message=INTERRUPTED)
    summary, path = ledger.save(final=True)
    progress.close(summary, str(path))
    if code == EXIT_OK and summary["failed"]:
        code = EXIT_FAILED
    return code


class _Refused(Exception):
    """The cluster cannot run these jobs (checked after joining it, before any job starts)."""


def _run(args, to_run, out: Path, progress, ledger) -> None:
    from .runner import ClusterError, check_fits, connect, execute
    from .summary import job_entry

    try:
        node = connect(args.ray, args.num_cpus)
    except ClusterError as exc:
        raise _Refused(str(exc)) from None
    gpus = args.gpus_per_job if args.gpus_per_job is not None else (1.0 if node["GPU"] >= 1 else 0.0)
    problem = check_fits(node, args.cpus_per_job, gpus, local=not args.ray)
    if problem and not args.ray:
        raise _Refused(problem)
    if problem:
        print(f"warning: {problem}; the jobs wait until such a node joins", file=sys.stderr, flush=True)

    def on_done(item, outcome: dict) -> None:
        extra = {k: outcome[k] for k in ("worker", "attempts") if k in outcome}
        entry = job_entry(item, out, outcome["status"], seconds=outcome.get("seconds", 0.0),
                          message=outcome.get("message", ""), **extra)
        progress.job_done(entry)
        ledger.add(entry)

    ledger.extra["cluster"] = {**node, "address": args.ray or "local", "cpus_per_job": args.cpus_per_job,
                               "gpus_per_job": gpus}
    ledger.save()  # a summary from the start: the batch folder is one while it runs
    execute(to_run, out, cpus=args.cpus_per_job, gpus=gpus, max_retries=args.max_retries, progress=progress,
            on_done=on_done)
