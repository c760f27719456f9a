"""Where each job of a batch writes, and what a rerun does with what is already there (standard library only).

A batch is resumable because every job has a fixed folder, `DIR/<index>-<slug>-seed<N>/`, and
a folder says what it holds (`results.read_status`): a complete result of the same job is
skipped; a job that failed is left failed unless `--retry-failed`; anything else (never run,
or interrupted when the batch itself was stopped) runs. A complete result of a *different* job
in a job's folder (the manifest changed under the same prompt and seed) is refused, not
overwritten: it may be hours of GPU time.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ...results import JOB_FILE, read_status

SLUG_CHARS = 40
RUN, SKIP, FAILED_BEFORE = "run", "skip", "failed"


class PlanError(ValueError):
    """The output folder cannot take this batch as it is; the message names the job folder."""


@dataclass
class Planned:
    """One job of the batch with its folder and what this run does with it."""

    index: int
    line: int  # the manifest line it came from
    job: dict
    folder: str  # the name under DIR
    action: str  # RUN, SKIP (complete already) or FAILED_BEFORE (failed before; kept so without --retry-failed)
    message: str = ""  # FAILED_BEFORE: the earlier failure's message


def slug(prompt: str) -> str:
    """'A red cube!' -> 'a-red-cube': letters and digits of the prompt, dashes between, at most SLUG_CHARS."""
    text = "-".join(re.findall(r"[a-z0-9]+", prompt.lower()))[:SLUG_CHARS].strip("-")
    return text or "job"


def folder_name(index: int, job: dict) -> str:
    return f"{index:03d}-{slug(job['prompt'])}-seed{job['seed']}"


def first_difference(a, b, key: str = "") -> str | None:
    """The dotted key where two JSON values first differ, or None when they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for name in sorted(set(a) | set(b)):
            if name not in a or name not in b:
                return f"{key}.{name}" if key else name
            found = first_difference(a[name], b[name], f"{key}.{name}" if key else name)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{key}[{i}]")
            if found is not None:
                return found
        return None
    return None if a == b and type(a) is type(b) else (key or "job")


def _written_job(folder: Path):
    try:
        return json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def plan(entries, out_dir, *, retry_failed: bool = False) -> list[Planned]:
    """Each manifest entry's folder and action, judged from what `out_dir` holds now."""
    out_dir = Path(out_dir)
    planned = []
    for index, entry in enumerate(entries):
        name = folder_name(index, entry.job)
        folder = out_dir / name
        status = read_status(folder)
        state = status["state"]
        job = json.loads(json.dumps(entry.job))  # as job.json holds it
        written = _written_job(folder)
        same = written is not None and first_difference(job, written) is None
        action, message = RUN, ""
        if state == "complete":
            if not same:
                differs = first_difference(job, written) if written is not None else JOB_FILE
                raise PlanError(f"{folder}: holds a complete result of another job ({differs} differs from "
                                f"line {entry.line}'s); give another --out, or move the folder away to run it again")
            action = SKIP
        elif state == "running":
            raise PlanError(f"{folder}: a run (pid {status.get('pid')}) is writing there now; wait for it to "
                            f"finish or give another --out")
        elif state == "failed" and same and not retry_failed:
            action, message = FAILED_BEFORE, str(status.get("message") or "failed")
        planned.append(Planned(index, entry.line, entry.job, name, action, message))
    return planned
