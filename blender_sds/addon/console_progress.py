"""Progress lines on stdout for runs that block (scripts, background Blender).

A blocking `bpy.ops.sds.generate()` shows no panel, so without these a headless run is
silent for minutes. One line when the stage changes (a remote job's place in its worker's
queue included), then one per 5% of the steps (or every 30 s while nothing else is said),
so a log stays short however long the run. No bpy.
"""
from __future__ import annotations

import time

PERCENT_EVERY = 5
QUIET_SECONDS = 30.0


def _time(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f", {hours}h {minutes:02d}m left"
    return f", {minutes}m {secs:02d}s left" if minutes else f", {secs}s left"


class ConsoleProgress:
    """Call with the session.Generation after every pump; prints only when there is news."""

    def __init__(self, label: str, out=print):
        self.label = label
        self.out = out
        self.stage = None
        self.percent = -PERCENT_EVERY
        self.step = None
        self.said_at = time.monotonic()

    def __call__(self, generation) -> None:
        now = time.monotonic()
        line = None
        stage = generation.stage_text.lower() if generation.stage == "queued" else generation.stage
        if stage != self.stage:  # a queued job's place in line is news too
            self.stage = stage
            line = stage
        if generation.steps and generation.stage == "optimising":
            percent = int(100 * generation.step / generation.steps)
            if percent >= self.percent + PERCENT_EVERY or (line is None and now - self.said_at >= QUIET_SECONDS):
                self.percent = percent - percent % PERCENT_EVERY
                same = generation.step == self.step
                self.step = generation.step
                line = f"step {generation.step}/{generation.steps} ({percent}%{_time(generation.seconds_left)})" + (
                    " still working" if same else "")
        elif line is None and now - self.said_at >= QUIET_SECONDS:
            line = f"{stage} ({'still waiting' if generation.stage == 'queued' else 'still working'})"
        if line is not None:
            self.said_at = now
            self.out(f"SDS [{self.label}]: {line}", flush=True)
