"""What a batch shows while it runs: one bar over its jobs on a terminal, JSON lines on a pipe.

Jobs run in Ray workers, perhaps on other machines, so their events cannot be printed where
they happen: each task sends them to a `JobBoard` (a Ray actor, no CPU of its own), and the
driver drains the board twice a second. On a terminal the bar counts finished jobs and shows
each running job's step; on a pipe every event is one JSON line, as `run` prints them, with
`job` (the index) added, plus the batch's own `batch`, `job_done` and `summary` lines.
"""
from __future__ import annotations

import json
import sys


class JobBoard:
    """The events of running jobs, held until the driver drains them (a Ray actor's class)."""

    def __init__(self):
        self.events: list[dict] = []

    def report(self, index: int, event: dict) -> None:
        self.events.append({**event, "job": index})

    def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


class BatchProgress:
    """`bar` (tqdm on stderr), `json` (lines on stdout) or `none`."""

    def __init__(self, mode: str, stdout=None):
        self.mode = mode
        self.stdout = stdout or sys.stdout
        self.bar = None
        self.running: dict[int, str] = {}  # job index -> "step/steps" (or its stage)

    def _line(self, record: dict) -> None:
        print(json.dumps(record), file=self.stdout, flush=True)

    def start(self, *, jobs: int, to_run: int, skipped: int, failed_before: int, out: str) -> None:
        record = {"type": "batch", "jobs": jobs, "run": to_run, "skipped": skipped,
                  "failed_before": failed_before, "out": out}
        if self.mode == "json":
            self._line(record)
        elif self.mode == "bar":
            from tqdm import tqdm
            print(f"{jobs} jobs: {to_run} to run, {skipped} complete already, {failed_before} failed before "
                  f"(--retry-failed runs them) -> {out}", file=sys.stderr, flush=True)
            if to_run:
                self.bar = tqdm(total=to_run, unit="job", dynamic_ncols=True)

    def event(self, event: dict) -> None:
        """An engine event of a running job (with `job`), or the task's `attempt`."""
        if self.mode == "json":
            self._line(event)
            return
        index, kind = event.get("job"), event.get("type")
        if kind == "attempt":
            self.running[index] = "starting"
        elif kind == "start":
            self.running[index] = f"{event['start_step']}/{event['steps']}"
        elif kind == "progress":
            self.running[index] = f"{event['step']}/{event['steps']}"
        elif kind == "stage" and event.get("name") not in ("optimising",):
            self.running[index] = event.get("name", "")
        self._postfix()

    def job_done(self, entry: dict) -> None:
        """A job's summary entry, as it finishes."""
        self.running.pop(entry["index"], None)
        if self.mode == "json":
            self._line({"type": "job_done", **entry})
        elif self.bar is not None:
            if entry["status"] == "failed":
                self.bar.write(f"{entry['folder']} failed: {entry['message']}", file=sys.stderr)
            self.bar.update(1)
            self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            shown = sorted(self.running.items())[:4]
            more = f" +{len(self.running) - 4}" if len(self.running) > 4 else ""
            self.bar.set_postfix_str(", ".join(f"{i:03d} {s}" for i, s in shown) + more)

    def close(self, summary: dict | None = None, path: str | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if summary is None:
            return
        counts = {k: summary[k] for k in ("complete", "failed", "skipped")}
        if self.mode == "json":
            self._line({"type": "summary", **counts, "seconds": summary.get("seconds"), "summary": path})
        elif self.mode == "bar":
            print(f"{counts['complete']} complete ({counts['skipped']} of them from before), {counts['failed']} "
                  f"failed in {summary.get('seconds')} s -> {path}", file=sys.stderr, flush=True)
